//! Building a TensorFlow graph the way TF1 Python builds it: op names under name scopes
//! (`den_1/...`), variables as `VariableV2` + `<name>/Assign` + `<name>/read`, so the
//! checkpoint keys, `.meta` collections and BPrune manifests match what TFP users know.

pub mod batchnorm;
pub mod flipout;
pub mod layers;

use std::collections::HashSet;

use tensorflow::{DataType, Graph, Operation, OperationDescription, Output, Shape, Tensor, TensorType};

use crate::error::{Result, TrainError};

/// What a variable is for; decides whether it is trained, saved and how it is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarKind {
    /// A trainable model parameter.
    Trainable,
    /// Optimizer state (slots, beta powers).
    Optimizer,
    /// The `global_step` counter.
    Step,
    /// Model state updated by the forward pass, not by gradients: batch normalization's
    /// `moving_mean` / `moving_variance` (saved, restored and broadcast; not trainable).
    Moving,
}

/// A `VariableV2` with the ops TF1's `tf.Variable` puts next to it.
#[derive(Clone)]
pub struct Var {
    /// Full op name, e.g. `den_1/kernel_posterior_loc`; also the checkpoint key.
    pub name: String,
    /// The `VariableV2` op.
    pub op: Operation,
    /// `<name>/read`: the value snapshot layers read.
    pub read: Output,
    /// `<name>/Assign`: writes the initial value.
    pub initializer: Operation,
    /// The initial value `initializer` assigns; feeding it assigns another value instead.
    pub init_value: Output,
    /// Static shape.
    pub shape: Vec<i64>,
    /// Element type.
    pub dtype: DataType,
    /// What the variable is for.
    pub kind: VarKind,
}

impl Var {
    /// The ref output (`<name>:0`), which assignments and optimizer ops write through.
    pub fn output(&self) -> Output {
        self.op.output(0)
    }

    /// Number of elements.
    pub fn num_elements(&self) -> usize {
        self.shape.iter().product::<i64>().max(0) as usize
    }
}

/// Graph under construction, with TF1-style name scopes and unique names.
pub struct GraphBuilder {
    graph: Graph,
    used: HashSet<String>,
    scopes: Vec<String>,
    seed: i64,
    next_seed2: i64,
    vars: Vec<Var>,
    /// Inside [`GraphBuilder::reusing`]: the tower's name-scope prefix (`training/`), which
    /// variable names drop to find the variables the first tower created.
    reuse_prefix: Option<String>,
}

impl GraphBuilder {
    /// An empty graph whose random ops get graph seed `seed` (op seeds count up from 1, so
    /// the same program and seed give the same random numbers, as `tf.set_random_seed` does).
    pub fn new(seed: i64) -> Self {
        GraphBuilder { graph: Graph::new(), used: HashSet::new(), scopes: Vec::new(), seed, next_seed2: 1, vars: Vec::new(), reuse_prefix: None }
    }

    /// The graph built so far.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The graph, mutably (for `add_gradients`).
    pub fn graph_mut(&mut self) -> &mut Graph {
        &mut self.graph
    }

    /// Every variable created, in creation order.
    pub fn variables(&self) -> &[Var] {
        &self.vars
    }

    /// Gives up the builder for its graph and variables.
    pub fn finish(self) -> (Graph, Vec<Var>) {
        (self.graph, self.vars)
    }

    /// Changes the graph seed of the random ops built from now on (per-rank noise).
    pub fn set_seed(&mut self, seed: i64) {
        self.seed = seed;
    }

    /// Runs `f` with ops named under `name/`; `name` is made unique like `tf.name_scope`
    /// does (`name`, `name_1`, ...).
    pub fn scope<R>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Result<R>) -> Result<R> {
        let p = self.prefix();
        let full = self.unique(name);
        let rel = if p.is_empty() { full.clone() } else { full[p.len() + 1..].to_string() };
        self.scopes.push(rel);
        let r = f(self);
        self.scopes.pop();
        r
    }

    /// Runs `f` with ops under the name scope `name/` but with every [`GraphBuilder::variable`]
    /// call returning the variable of the same name outside that scope, created earlier (as
    /// TF1's `variable_scope(reuse=True)` inside a separate `name_scope`): a second tower of
    /// the same network that shares its weights.
    pub fn reusing<R>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Result<R>) -> Result<R> {
        if self.reuse_prefix.is_some() || !self.scopes.is_empty() {
            return Err(TrainError::Invalid(format!("tower '{name}' must be built at the root scope, once")));
        }
        self.scope(name, |g| {
            g.reuse_prefix = Some(format!("{}/", g.prefix()));
            let r = f(g);
            g.reuse_prefix = None;
            r
        })
    }

    /// The current scope prefix, `a/b` (empty at the root).
    pub fn prefix(&self) -> String {
        self.scopes.join("/")
    }

    /// A name not used yet: `scope/base`, else `scope/base_1`, `scope/base_2`, ...
    pub fn unique(&mut self, base: &str) -> String {
        let p = self.prefix();
        let stem = if p.is_empty() { base.to_string() } else { format!("{p}/{base}") };
        let mut name = stem.clone();
        let mut i = 1;
        while self.used.contains(&name) {
            name = format!("{stem}_{i}");
            i += 1;
        }
        self.used.insert(name.clone());
        name
    }

    /// Adds an op named (uniquely) `base` in the current scope.
    pub fn op(
        &mut self,
        ty: &str,
        base: &str,
        inputs: &[Output],
        control: &[Operation],
        attrs: impl FnOnce(&mut OperationDescription<'_>) -> Result<()>,
    ) -> Result<Operation> {
        let name = self.unique(base);
        let mut d = self.graph.new_operation(ty, &name)?;
        for i in inputs {
            d.add_input(i.clone());
        }
        for c in control {
            d.add_control_input(c);
        }
        attrs(&mut d)?;
        Ok(d.finish()?)
    }

    /// An op with one output, returned.
    pub fn op1(&mut self, ty: &str, base: &str, inputs: &[Output]) -> Result<Output> {
        Ok(self.op(ty, base, inputs, &[], |_| Ok(()))?.output(0))
    }

    /// A constant tensor.
    pub fn constant<T: TensorType>(&mut self, base: &str, dims: &[u64], values: &[T]) -> Result<Output> {
        let t = Tensor::<T>::new(dims).with_values(values)?;
        Ok(self
            .op("Const", base, &[], &[], |d| {
                d.set_attr_type("dtype", T::data_type())?;
                Ok(d.set_attr_tensor("value", t)?)
            })?
            .output(0))
    }

    /// A float32 scalar constant.
    pub fn scalar(&mut self, base: &str, v: f32) -> Result<Output> {
        self.constant::<f32>(base, &[], &[v])
    }

    /// An int32 vector constant (shapes, axes).
    pub fn ints(&mut self, base: &str, v: &[i32]) -> Result<Output> {
        self.constant::<i32>(base, &[v.len() as u64], v)
    }

    /// A placeholder; `None` dimensions are unknown (the batch).
    pub fn placeholder(&mut self, base: &str, dtype: DataType, dims: &[Option<i64>]) -> Result<Output> {
        let shape = Shape::from(Some(dims.to_vec()));
        Ok(self
            .op("Placeholder", base, &[], &[], |d| {
                d.set_attr_type("dtype", dtype)?;
                Ok(d.set_attr_shape("shape", &shape)?)
            })?
            .output(0))
    }

    /// `a <op> b` for a binary op (`Add`, `Sub`, `Mul`, `RealDiv`, `MatMul`...).
    pub fn binary(&mut self, ty: &str, a: &Output, b: &Output) -> Result<Output> {
        self.op1(ty, ty, &[a.clone(), b.clone()])
    }

    /// A one-input op (`Relu`, `Softplus`, `Log`, `Square`, `Neg`, `Identity`...).
    pub fn unary(&mut self, ty: &str, x: &Output) -> Result<Output> {
        self.op1(ty, ty, std::slice::from_ref(x))
    }

    /// `Sum` over the given axes (all when empty... pass every axis explicitly).
    pub fn sum(&mut self, x: &Output, axes: &[i32]) -> Result<Output> {
        let ax = self.ints("Sum/reduction_indices", axes)?;
        self.op1("Sum", "Sum", &[x.clone(), ax])
    }

    /// `Mean` over the given axes.
    pub fn mean(&mut self, x: &Output, axes: &[i32]) -> Result<Output> {
        let ax = self.ints("Mean/reduction_indices", axes)?;
        self.op1("Mean", "Mean", &[x.clone(), ax])
    }

    /// `Reshape` to a fixed shape (`-1` for the inferred dimension).
    pub fn reshape(&mut self, x: &Output, shape: &[i32]) -> Result<Output> {
        let s = self.ints("Reshape/shape", shape)?;
        self.op1("Reshape", "Reshape", &[x.clone(), s])
    }

    /// `Cast` to `dtype`.
    pub fn cast(&mut self, x: &Output, dtype: DataType) -> Result<Output> {
        Ok(self.op("Cast", "Cast", std::slice::from_ref(x), &[], |d| Ok(d.set_attr_type("DstT", dtype)?))?.output(0))
    }

    /// Standard normal samples of a static shape (TF's `RandomStandardNormal`).
    pub fn random_normal(&mut self, base: &str, dims: &[i64], mean: f32, stddev: f32) -> Result<Output> {
        let dims32: Vec<i32> = dims.iter().map(|&d| d as i32).collect();
        let (seed, seed2) = self.next_seeds();
        let out = self.scope(base, |g| {
            let shape = g.ints("shape", &dims32)?;
            let z = g.op("RandomStandardNormal", "RandomStandardNormal", &[shape], &[], |d| {
                d.set_attr_type("dtype", DataType::Float)?;
                d.set_attr_int("seed", seed)?;
                Ok(d.set_attr_int("seed2", seed2)?)
            })?;
            let mut out = z.output(0);
            if stddev != 1.0 {
                let s = g.scalar("stddev", stddev)?;
                out = g.op1("Mul", "mul", &[out, s])?;
            }
            if mean != 0.0 {
                let m = g.scalar("mean", mean)?;
                out = g.op1("AddV2", "add", &[out, m])?;
            }
            Ok(out)
        })?;
        Ok(out)
    }

    /// Uniform samples in `[-limit, limit)` of a static shape (Glorot-uniform initializers).
    pub fn random_uniform(&mut self, base: &str, dims: &[i64], limit: f32) -> Result<Output> {
        let dims32: Vec<i32> = dims.iter().map(|&d| d as i32).collect();
        let (seed, seed2) = self.next_seeds();
        self.scope(base, |g| {
            let shape = g.ints("shape", &dims32)?;
            let u = g.op("RandomUniform", "RandomUniform", &[shape], &[], |d| {
                d.set_attr_type("dtype", DataType::Float)?;
                d.set_attr_int("seed", seed)?;
                Ok(d.set_attr_int("seed2", seed2)?)
            })?;
            let two_l = g.scalar("range", 2.0 * limit)?;
            let l = g.scalar("min", -limit)?;
            let scaled = g.op1("Mul", "mul", &[u.output(0), two_l])?;
            g.op1("AddV2", "add", &[scaled, l])
        })
    }

    /// Random signs, +1 or -1 with equal probability, of a dynamic shape (an int32 vector
    /// output): TFP's `random_rademacher`, used for Flipout's sign perturbations.
    pub fn random_rademacher(&mut self, shape: &Output) -> Result<Output> {
        let (seed, seed2) = self.next_seeds();
        self.scope("random_rademacher", |g| {
            let lo = g.constant::<i32>("minval", &[], &[0])?;
            let hi = g.constant::<i32>("maxval", &[], &[2])?;
            let bits = g.op("RandomUniformInt", "RandomUniformInt", &[shape.clone(), lo, hi], &[], |d| {
                d.set_attr_int("seed", seed)?;
                Ok(d.set_attr_int("seed2", seed2)?)
            })?;
            let f = g.cast(&bits.output(0), DataType::Float)?;
            let two = g.scalar("two", 2.0)?;
            let one = g.scalar("one", 1.0)?;
            let t = g.op1("Mul", "mul", &[f, two])?;
            g.op1("Sub", "sub", &[t, one])
        })
    }

    /// Standard normal samples of a static shape, drawn anew on every run (Flipout's eps).
    ///
    /// Drawn by [`GraphBuilder::box_muller`] rather than `RandomStandardNormal`: same
    /// distribution, but TensorFlow's kernel transforms each pair with scalar libm calls,
    /// which made sampling eps the largest single cost of a BNN step on CPU.
    pub fn noise(&mut self, dims: &[i64]) -> Result<Output> {
        self.box_muller(dims)
    }

    /// Standard normal samples of a static shape by the Box-Muller transform of uniform
    /// samples u1, u2: `sqrt(-2 ln(1 - u1)) * (cos, sin)(2 pi u2)`, exact in distribution,
    /// in element-wise ops that Eigen vectorizes.
    pub fn box_muller(&mut self, dims: &[i64]) -> Result<Output> {
        let n: i64 = dims.iter().product();
        let half = (n + 1) / 2;
        let (seed, seed2) = self.next_seeds();
        let dims32: Vec<i32> = dims.iter().map(|&d| d as i32).collect();
        self.scope("box_muller", |g| {
            let shape = g.ints("shape", &[2, half as i32])?;
            let u = g.op("RandomUniform", "RandomUniform", &[shape], &[], |d| {
                d.set_attr_type("dtype", DataType::Float)?;
                d.set_attr_int("seed", seed)?;
                Ok(d.set_attr_int("seed2", seed2)?)
            })?.output(0);
            let parts = g.op("Unpack", "unstack", &[u], &[], |d| {
                d.set_attr_int("num", 2)?;
                Ok(d.set_attr_int("axis", 0)?)
            })?;
            let (u1, u2) = (parts.output(0), parts.output(1));
            let one = g.scalar("one", 1.0)?;
            let u1 = g.binary("Sub", &one, &u1)?; // (0, 1]
            let l = g.unary("Log", &u1)?;
            let m2 = g.scalar("minus_two", -2.0)?;
            let l = g.binary("Mul", &l, &m2)?;
            let r = g.unary("Sqrt", &l)?;
            let tp = g.scalar("two_pi", std::f32::consts::TAU)?;
            let th = g.binary("Mul", &u2, &tp)?;
            let c = g.unary("Cos", &th)?;
            let s = g.unary("Sin", &th)?;
            let a = g.binary("Mul", &r, &c)?;
            let b = g.binary("Mul", &r, &s)?;
            let ax = g.constant::<i32>("concat_axis", &[], &[0])?;
            let z = g.op("ConcatV2", "concat", &[], &[], |d| { d.add_input_list(&[a, b]); d.add_input(ax); Ok(()) })?.output(0);
            let flat = if 2 * half != n {
                let b0 = g.ints("begin", &[0])?;
                let sz = g.ints("size", &[n as i32])?;
                g.op1("Slice", "Slice", &[z, b0, sz])?
            } else { z };
            let s = g.ints("out_shape", &dims32)?;
            g.op1("Reshape", "Reshape", &[flat, s])
        })
    }

    fn next_seeds(&mut self) -> (i64, i64) {
        let s2 = self.next_seed2;
        self.next_seed2 += 1;
        // TF treats seed = seed2 = 0 as "non-deterministic"; seed2 >= 1 avoids that.
        (self.seed, s2)
    }

    /// A TF1 variable `scope/name` with its `Assign` and `read` ops; `init` builds the
    /// initial value (under `name/Initializer/`).
    pub fn variable(
        &mut self,
        name: &str,
        dims: &[i64],
        dtype: DataType,
        kind: VarKind,
        init: impl FnOnce(&mut Self) -> Result<Output>,
    ) -> Result<Var> {
        let p = self.prefix();
        let full = if p.is_empty() { name.to_string() } else { format!("{p}/{name}") };
        if let Some(tower) = &self.reuse_prefix {
            let shared = full.strip_prefix(tower.as_str()).unwrap_or(&full);
            return match self.vars.iter().find(|v| v.name == shared) {
                Some(v) if v.shape == dims && v.dtype == dtype && v.kind == kind => Ok(v.clone()),
                Some(v) => Err(TrainError::Invalid(format!("variable '{shared}' reused as {dims:?}, created as {:?}", v.shape))),
                None => Err(TrainError::Invalid(format!("variable '{shared}' reused before it was created"))),
            };
        }
        if !self.used.insert(full.clone()) {
            return Err(TrainError::Invalid(format!("variable name '{full}' used twice")));
        }
        let shape = Shape::from(Some(dims.iter().map(|&d| Some(d)).collect::<Vec<_>>()));
        let op = {
            let mut d = self.graph.new_operation("VariableV2", &full)?;
            d.set_attr_type("dtype", dtype)?;
            d.set_attr_shape("shape", &shape)?;
            d.set_attr_string("container", "")?;
            d.set_attr_string("shared_name", "")?;
            d.finish()?
        };
        // The variable's own ops live under its name, as in TF1 (`<name>/Assign`).
        self.scopes.push(name.to_string());
        let r = (|| -> Result<(Output, Operation, Output)> {
            let g = &mut *self;
            let init_value = g.scope("Initializer", |g| init(g))?;
            let initializer = g.op("Assign", "Assign", &[op.output(0), init_value.clone()], &[], |d| {
                d.set_attr_bool("validate_shape", true)?;
                Ok(d.set_attr_bool("use_locking", true)?)
            })?;
            let read = g.op1("Identity", "read", &[op.output(0)])?;
            Ok((init_value, initializer, read))
        })();
        self.scopes.pop();
        let (init_value, initializer, read) = r?;
        let v = Var { name: full, op, read, initializer, init_value, shape: dims.to_vec(), dtype, kind };
        self.vars.push(v.clone());
        Ok(v)
    }

    /// A float variable filled with one value (optimizer slots, beta powers).
    pub fn variable_filled(&mut self, name: &str, dims: &[i64], value: f32, kind: VarKind) -> Result<Var> {
        let dims32: Vec<i32> = dims.iter().map(|&d| d as i32).collect();
        self.variable(name, dims, DataType::Float, kind, |g| {
            if dims.is_empty() {
                return g.scalar("Const", value);
            }
            let s = g.ints("shape", &dims32)?;
            let c = g.scalar("Const", value)?;
            g.op1("Fill", "Fill", &[s, c])
        })
    }
}

/// Softplus in float64, computed stably: `ln(1 + e^x)`; the reference for tests and
/// reports (the graph uses TF's `Softplus` op).
pub fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

/// Helpers the unit tests of the graph modules share.
#[cfg(test)]
pub(crate) mod testing {
    use tensorflow::{Graph, Output, Session, SessionOptions, SessionRunArgs, Tensor};

    /// A session on `graph` with every variable initialized.
    pub fn session(graph: &Graph, vars: &[super::Var]) -> Session {
        let s = Session::new(&SessionOptions::new(), graph).unwrap();
        if !vars.is_empty() {
            let mut run = SessionRunArgs::new();
            for v in vars {
                run.add_target(&v.initializer);
            }
            s.run(&mut run).unwrap();
        }
        s
    }

    /// Evaluates float outputs.
    pub fn eval(s: &Session, outs: &[&Output]) -> Vec<Vec<f32>> {
        let mut run = SessionRunArgs::new();
        let toks: Vec<_> = outs.iter().map(|o| run.request_fetch(&o.operation, o.index)).collect();
        s.run(&mut run).unwrap();
        toks.into_iter().map(|t| run.fetch::<f32>(t).unwrap().to_vec()).collect()
    }

    /// A float tensor.
    pub fn tensor(dims: &[u64], v: &[f32]) -> Tensor<f32> {
        Tensor::new(dims).with_values(v).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{eval, session};
    use super::*;

    #[test]
    fn softplus_matches_reference_values() {
        // tf.nn.softplus in float64 (TensorFlow 2.21).
        for (x, want) in [(0.0, std::f64::consts::LN_2), (-3.0, 0.048587351573742055), (-9.0, 0.00012340218972325883), (30.0, 30.00000000000009)] {
            assert!((softplus(x) - want).abs() <= 1e-15 * want.max(1.0), "softplus({x})");
        }
        let mut g = GraphBuilder::new(1);
        let x = g.constant::<f32>("x", &[4], &[0.0, -3.0, -9.0, 30.0]).unwrap();
        let y = g.unary("Softplus", &x).unwrap();
        let s = session(g.graph(), &[]);
        let got = &eval(&s, &[&y])[0];
        for (v, x) in got.iter().zip([0.0, -3.0, -9.0, 30.0]) {
            assert!((f64::from(*v) - softplus(x)).abs() <= 1e-6 * softplus(x).max(1.0));
        }
    }

    #[test]
    fn names_follow_tf1_scoping() {
        let mut g = GraphBuilder::new(1);
        let v = g.scope("den_1", |g| g.variable_filled("kernel_posterior_loc", &[2, 3], 0.5, VarKind::Trainable)).unwrap();
        assert_eq!(v.name, "den_1/kernel_posterior_loc");
        assert_eq!(v.initializer.name().unwrap(), "den_1/kernel_posterior_loc/Assign");
        assert_eq!(v.read.operation.name().unwrap(), "den_1/kernel_posterior_loc/read");
        // A second `den_1` scope becomes `den_1_1`, as tf.name_scope does.
        let again = g.scope("den_1", |g| Ok(g.prefix())).unwrap();
        assert_eq!(again, "den_1_1");
        let nested = g.scope("block_1/Conv_1", |g| g.scalar("c", 1.0)).unwrap();
        assert_eq!(nested.operation.name().unwrap(), "block_1/Conv_1/c");
        assert!(g.scope("den_1", |g| g.variable_filled("kernel_posterior_loc", &[1], 0.0, VarKind::Trainable)).is_ok());
        let dup = g.variable_filled("den_1/kernel_posterior_loc", &[1], 0.0, VarKind::Trainable);
        assert!(dup.is_err());
    }

    #[test]
    fn gradient_of_a_tiny_graph_is_the_analytic_one() {
        // L = sum((x·W)²) + sum(softplus(r))  =>  dL/dW = 2 xᵀ(xW),  dL/dr = sigmoid(r).
        let mut g = GraphBuilder::new(1);
        let x = g.constant::<f32>("x", &[2, 2], &[1.0, 2.0, -1.0, 0.5]).unwrap();
        let w = g.variable("w", &[2, 1], DataType::Float, VarKind::Trainable, |g| g.constant::<f32>("c", &[2, 1], &[0.3, -0.2])).unwrap();
        let r = g.variable("r", &[2], DataType::Float, VarKind::Trainable, |g| g.constant::<f32>("c", &[2], &[0.0, -3.0])).unwrap();
        let xw = g.binary("MatMul", &x, &w.read).unwrap();
        let sq = g.unary("Square", &xw).unwrap();
        let l1 = g.sum(&sq, &[0, 1]).unwrap();
        let sp = g.unary("Softplus", &r.read).unwrap();
        let l2 = g.sum(&sp, &[0]).unwrap();
        let loss = g.binary("AddV2", &l1, &l2).unwrap();
        let grads = g.graph_mut().add_gradients(None, &[loss], &[w.read.clone(), r.read.clone()], None).unwrap();
        let (gw, gr) = (grads[0].clone().unwrap(), grads[1].clone().unwrap());
        let vars = g.variables().to_vec();
        let s = session(g.graph(), &vars);
        let out = eval(&s, &[&gw, &gr]);
        // xW = [1*0.3 + 2*(-0.2), -0.3 - 0.1] = [-0.1, -0.4]; 2 xᵀ(xW) = [2*(-0.1 + 0.4), 2*(-0.2 - 0.2)].
        let want_w = [0.6f32, -0.8];
        for (a, b) in out[0].iter().zip(want_w) {
            assert!((a - b).abs() < 1e-6, "{:?}", out[0]);
        }
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        assert!((f64::from(out[1][0]) - sig(0.0)).abs() < 1e-6);
        assert!((f64::from(out[1][1]) - sig(-3.0)).abs() < 1e-6);
    }

    #[test]
    fn rademacher_signs_are_plus_minus_one_and_balanced() {
        let mut g = GraphBuilder::new(3);
        let shape = g.ints("s", &[1000, 4]).unwrap();
        let r = g.random_rademacher(&shape).unwrap();
        let s = session(g.graph(), &[]);
        let v = &eval(&s, &[&r])[0];
        assert!(v.iter().all(|&x| x == 1.0 || x == -1.0));
        let plus = v.iter().filter(|&&x| x > 0.0).count();
        // 4000 fair coins: 2000 ± 4.5 sigma.
        assert!((1860..=2140).contains(&plus), "{plus}");
    }
}

#[cfg(test)]
mod noise_tests {
    use super::testing::{eval, session};
    use super::*;

    #[test]
    fn box_muller_samples_are_standard_normal() {
        let mut g = GraphBuilder::new(11);
        // An odd count exercises the final slice.
        let z = g.noise(&[301, 333]).unwrap();
        let s = session(g.graph(), &[]);
        let v: Vec<f64> = eval(&s, &[&z])[0].iter().map(|&x| f64::from(x)).collect();
        let n = v.len() as f64;
        assert_eq!(v.len(), 301 * 333);
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let kurt = v.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / n / (var * var);
        // ~100k samples: standard errors 0.003 (mean), 0.0045 (variance), 0.015 (kurtosis).
        assert!(mean.abs() < 0.015, "mean {mean}");
        assert!((var - 1.0).abs() < 0.025, "variance {var}");
        assert!((kurt - 3.0).abs() < 0.08, "kurtosis {kurt}");
        // Tails: P(|z| > 1.96) = 0.05, P(|z| > 3) = 0.0027.
        let tail = |t: f64| v.iter().filter(|x| x.abs() > t).count() as f64 / n;
        assert!((tail(1.96) - 0.05).abs() < 0.004, "{}", tail(1.96));
        assert!((tail(3.0) - 0.0027).abs() < 0.0008, "{}", tail(3.0));
        assert!(v.iter().all(|x| x.is_finite()));
        // A new draw on every run.
        assert_ne!(eval(&s, &[&z])[0][..10], eval(&s, &[&z])[0][..10]);
    }
}

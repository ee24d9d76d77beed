//! What each checkpoint variable is: a posterior parameter of a BNN layer, a plain weight,
//! an optimizer slot, a step counter, a metric... and the grouping of posteriors into layers.
//!
//! Classification works on TensorFlow variable names (`den_1/kernel_posterior_loc`,
//! `den_1/kernel_posterior_loc/RMSProp`); TF2 checkpoint keys are first mapped to variable
//! names through the object graph (see [`crate::object_graph`]).

use std::collections::BTreeMap;

use serde::Serialize;

/// Which tensor of a layer a variable is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Param {
    /// `kernel_posterior_loc`: the posterior mean mu of the weights.
    KernelLoc,
    /// `kernel_posterior_untransformed_scale`: rho, with sigma = softplus(rho).
    KernelRho,
    /// `bias_posterior_loc`.
    BiasLoc,
    /// `bias_posterior_untransformed_scale` (when the bias is Bayesian too).
    BiasRho,
    /// `kernel_prior_loc` (a trainable prior).
    KernelPriorLoc,
    /// `kernel_prior_untransformed_scale`.
    KernelPriorRho,
    /// `bias_prior_loc`.
    BiasPriorLoc,
    /// `bias_prior_untransformed_scale`.
    BiasPriorRho,
    /// `kernel` of a deterministic layer.
    Kernel,
    /// `bias` of a deterministic layer.
    Bias,
}

impl Param {
    const SUFFIXES: [(&'static str, Param); 10] = [
        ("kernel_posterior_loc", Param::KernelLoc),
        ("kernel_posterior_untransformed_scale", Param::KernelRho),
        ("bias_posterior_loc", Param::BiasLoc),
        ("bias_posterior_untransformed_scale", Param::BiasRho),
        ("kernel_prior_loc", Param::KernelPriorLoc),
        ("kernel_prior_untransformed_scale", Param::KernelPriorRho),
        ("bias_prior_loc", Param::BiasPriorLoc),
        ("bias_prior_untransformed_scale", Param::BiasPriorRho),
        ("kernel", Param::Kernel),
        ("bias", Param::Bias),
    ];

    /// The variable-name suffix TensorFlow Probability uses.
    pub fn suffix(self) -> &'static str {
        Param::SUFFIXES.iter().find(|(_, p)| *p == self).map(|(s, _)| *s).unwrap_or("")
    }
}

/// What a checkpoint variable is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VariableKind {
    /// A weight of layer `layer`.
    Weight {
        /// Layer (name scope) the weight belongs to.
        layer: String,
        /// Which tensor of the layer.
        param: Param,
    },
    /// An optimizer accumulator for variable `of`.
    OptimizerSlot {
        /// The variable the slot belongs to.
        of: String,
        /// Slot name (`RMSProp`, `RMSProp_1`, `Adam`, `m`, `v`, ...).
        slot: String,
    },
    /// Optimizer state that is no slot (`beta1_power`, `optimizer/iter`, learning rate...).
    OptimizerState,
    /// `global_step`, `save_counter` and other step counters.
    Step,
    /// Streaming metric accumulators (`total`, `count`, `accuracy/...`).
    Metric,
    /// TF2's serialized object graph.
    ObjectGraph,
    /// A batch normalization variable of scope `layer`: part of the model, not Bayesian (no
    /// SNR, never pruned).
    BatchNorm {
        /// Scope of the batch normalization (`bn_1`, `Conv_1/batch_normalization`).
        layer: String,
        /// Which of its variables.
        param: BatchNormParam,
    },
    /// Anything else: kept with the model.
    Other,
}

/// Which variable of a batch normalization (Keras `BatchNormalization`, TF1
/// `tf.layers.batch_normalization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchNormParam {
    /// `gamma`: the scale.
    Gamma,
    /// `beta`: the offset.
    Beta,
    /// `moving_mean`.
    MovingMean,
    /// `moving_variance`.
    MovingVariance,
}

impl BatchNormParam {
    /// The variable-name leaf.
    pub fn leaf(self) -> &'static str {
        match self {
            BatchNormParam::Gamma => "gamma",
            BatchNormParam::Beta => "beta",
            BatchNormParam::MovingMean => "moving_mean",
            BatchNormParam::MovingVariance => "moving_variance",
        }
    }
}

impl VariableKind {
    /// Whether the variable is part of the model (kept without `--include-optimizer`).
    pub fn is_model(&self) -> bool {
        matches!(self, VariableKind::Weight { .. } | VariableKind::BatchNorm { .. } | VariableKind::Other)
    }

    /// The short name `inspect` prints in its KIND column (the JSON `kind` tag).
    pub fn tag(&self) -> &'static str {
        match self {
            VariableKind::Weight { .. } => "weight",
            VariableKind::OptimizerSlot { .. } => "optimizer_slot",
            VariableKind::OptimizerState => "optimizer_state",
            VariableKind::Step => "step",
            VariableKind::Metric => "metric",
            VariableKind::ObjectGraph => "object_graph",
            VariableKind::BatchNorm { .. } => "batch_norm",
            VariableKind::Other => "other",
        }
    }
}

/// Marks `gamma`/`beta` as batch normalization where their scope also holds a `moving_mean`
/// (which [`classify`] already marks): a name alone cannot tell a batch normalization's
/// `gamma` from a layer normalization's. `vars` yields (variable name, kind) pairs.
pub fn mark_batch_norm<'a>(vars: impl Iterator<Item = (&'a str, &'a mut VariableKind)>) {
    let vars: Vec<(&str, &mut VariableKind)> = vars.collect();
    let scopes: std::collections::HashSet<String> = vars
        .iter()
        .filter_map(|(_, k)| match k {
            VariableKind::BatchNorm { layer, param: BatchNormParam::MovingMean } => Some(layer.clone()),
            _ => None,
        })
        .collect();
    for (name, kind) in vars {
        let Some((scope, leaf)) = name.rsplit_once('/') else { continue };
        let param = match leaf {
            "gamma" => BatchNormParam::Gamma,
            "beta" => BatchNormParam::Beta,
            _ => continue,
        };
        if *kind == VariableKind::Other && scopes.contains(scope) {
            *kind = VariableKind::BatchNorm { layer: scope.to_string(), param };
        }
    }
}

/// Model variables that are no weight posterior, grouped by scope: what `snr` and `inspect`
/// list as not Bayesian (no SNR, never pruned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NonBayesian {
    /// Scope (layer) of the variables.
    pub layer: String,
    /// `batch_norm`, `deterministic` (a layer's plain `kernel`/`bias`) or `other`.
    pub kind: &'static str,
    /// Variable names, in checkpoint order.
    pub variables: Vec<String>,
    /// Values (elements) in all of them.
    pub values: u64,
}

/// Groups the model variables that are not part of a Bayesian layer's posterior. `vars`
/// yields (variable name, kind, element count) in checkpoint order; `bayesian` names the
/// Bayesian layers (their `kernel`/`bias` variables are posteriors or belong with them).
pub fn non_bayesian<'a>(vars: impl IntoIterator<Item = (&'a str, &'a VariableKind, u64)>, bayesian: &[&str]) -> Vec<NonBayesian> {
    let mut groups: Vec<NonBayesian> = Vec::new();
    for (name, kind, values) in vars {
        let (layer, what) = match kind {
            VariableKind::BatchNorm { layer, .. } => (layer.as_str(), "batch_norm"),
            VariableKind::Weight { layer, .. } if !bayesian.contains(&layer.as_str()) => (layer.as_str(), "deterministic"),
            VariableKind::Other => (name.rsplit_once('/').map_or("", |(s, _)| s), "other"),
            _ => continue,
        };
        match groups.iter_mut().find(|g| g.layer == layer && g.kind == what) {
            Some(g) => {
                g.variables.push(name.to_string());
                g.values += values;
            }
            None => groups.push(NonBayesian { layer: layer.to_string(), kind: what, variables: vec![name.to_string()], values }),
        }
    }
    groups
}

/// Slot suffixes TF1 optimizers append to the variable name.
const TF1_SLOTS: [&str; 8] = ["RMSProp", "RMSProp_1", "Adam", "Adam_1", "Momentum", "Adagrad", "Ftrl", "Ftrl_1"];

/// Classifies a TensorFlow variable name.
pub fn classify(name: &str) -> VariableKind {
    if name == "_CHECKPOINTABLE_OBJECT_GRAPH" {
        return VariableKind::ObjectGraph;
    }
    let leaf = name.rsplit('/').next().unwrap_or(name);
    if matches!(leaf, "global_step" | "save_counter" | "step" | "iteration") && !name.contains("optimizer/") {
        return VariableKind::Step;
    }
    if let Some((of, slot)) = name.rsplit_once('/') {
        // TF1 optimizers append their slot names; TF2 slots (`m`, `v`, `rms`...) are named here
        // `<variable>/<slot>`: either way the parent is itself a variable.
        if !of.is_empty() && (TF1_SLOTS.contains(&slot) || matches!(classify(of), VariableKind::Weight { .. } | VariableKind::BatchNorm { .. })) {
            return VariableKind::OptimizerSlot { of: of.to_string(), slot: slot.to_string() };
        }
    }
    if name.starts_with("optimizer/") || name.contains("/optimizer/") || matches!(leaf, "beta1_power" | "beta2_power" | "learning_rate")
    {
        return VariableKind::OptimizerState;
    }
    if matches!(leaf, "total" | "count") || name.starts_with("metrics/") || name.starts_with("accuracy/") {
        return VariableKind::Metric;
    }
    // gamma and beta need their scope's other variables: see mark_batch_norm.
    if let Some((layer, leaf @ ("moving_mean" | "moving_variance"))) = name.rsplit_once('/') {
        if !layer.is_empty() {
            let param = if leaf == "moving_mean" { BatchNormParam::MovingMean } else { BatchNormParam::MovingVariance };
            return VariableKind::BatchNorm { layer: layer.to_string(), param };
        }
    }
    for (suffix, param) in Param::SUFFIXES {
        if let Some(layer) = name.strip_suffix(suffix).and_then(|l| l.strip_suffix('/')) {
            if !layer.is_empty() {
                return VariableKind::Weight { layer: layer.to_string(), param };
            }
        }
    }
    VariableKind::Other
}

/// The variables of one layer, by parameter.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Layer {
    /// Layer name (`den_1`, `Conv_2`, `dense_flipout`).
    pub name: String,
    /// Variable name of each parameter present.
    pub params: BTreeMap<Param, String>,
}

impl Layer {
    /// Whether the layer has a Gaussian weight posterior (loc and untransformed scale): the
    /// layers SNR pruning works on.
    pub fn is_bayesian(&self) -> bool {
        self.params.contains_key(&Param::KernelLoc) && self.params.contains_key(&Param::KernelRho)
    }

    /// The variable holding `param`, if present.
    pub fn get(&self, param: Param) -> Option<&str> {
        self.params.get(&param).map(String::as_str)
    }
}

/// Groups weight variables into layers, in order of first appearance of each layer name.
/// `names` yields (stored key, variable name) pairs; the layer records stored keys.
pub fn group_layers<'a>(names: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<Layer> {
    let mut layers: Vec<Layer> = Vec::new();
    for (key, name) in names {
        if let VariableKind::Weight { layer, param } = classify(name) {
            let i = match layers.iter().position(|l| l.name == layer) {
                Some(i) => i,
                None => {
                    layers.push(Layer { name: layer, params: BTreeMap::new() });
                    layers.len() - 1
                }
            };
            layers[i].params.insert(param, key.to_string());
        }
    }
    layers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_bprune_variables() {
        assert_eq!(
            classify("den_1/kernel_posterior_untransformed_scale"),
            VariableKind::Weight { layer: "den_1".into(), param: Param::KernelRho }
        );
        assert_eq!(
            classify("den_1/kernel_posterior_loc/RMSProp_1"),
            VariableKind::OptimizerSlot { of: "den_1/kernel_posterior_loc".into(), slot: "RMSProp_1".into() }
        );
        assert_eq!(classify("global_step"), VariableKind::Step);
        assert_eq!(
            classify("dense_flipout/kernel_posterior_loc/m"),
            VariableKind::OptimizerSlot { of: "dense_flipout/kernel_posterior_loc".into(), slot: "m".into() }
        );
        assert_eq!(classify("beta1_power"), VariableKind::OptimizerState);
        assert_eq!(classify("optimizer/iter"), VariableKind::OptimizerState);
        assert_eq!(classify("accuracy/total"), VariableKind::Metric);
        assert_eq!(classify("Conv_1/bias"), VariableKind::Weight { layer: "Conv_1".into(), param: Param::Bias });
        assert_eq!(classify("some_table"), VariableKind::Other);
        assert_eq!(classify("_CHECKPOINTABLE_OBJECT_GRAPH"), VariableKind::ObjectGraph);
        assert!(!classify("kernel_posterior_loc").is_model() || classify("kernel_posterior_loc") == VariableKind::Other);
    }

    #[test]
    fn batch_norm_variables_are_their_own_kind_gamma_beta_only_beside_moving_statistics() {
        let bn = |layer: &str, param| VariableKind::BatchNorm { layer: layer.into(), param };
        assert_eq!(classify("bn_1/moving_mean"), bn("bn_1", BatchNormParam::MovingMean));
        assert_eq!(classify("Conv_1/batch_normalization/moving_variance"), bn("Conv_1/batch_normalization", BatchNormParam::MovingVariance));
        // Slots of BN variables stay slots, TF1 and TF2 style.
        assert_eq!(classify("bn_1/gamma/RMSProp"), VariableKind::OptimizerSlot { of: "bn_1/gamma".into(), slot: "RMSProp".into() });
        assert_eq!(classify("bn_1/moving_mean/m"), VariableKind::OptimizerSlot { of: "bn_1/moving_mean".into(), slot: "m".into() });
        // gamma/beta alone could be a layer normalization's.
        assert_eq!(classify("bn_1/gamma"), VariableKind::Other);
        let names = ["bn_1/beta", "bn_1/gamma", "bn_1/moving_mean", "ln/gamma", "ln/beta", "bn_1/moving_variance"];
        let mut kinds: Vec<VariableKind> = names.iter().map(|n| classify(n)).collect();
        mark_batch_norm(names.iter().copied().zip(kinds.iter_mut()));
        assert_eq!(kinds[0], bn("bn_1", BatchNormParam::Beta));
        assert_eq!(kinds[1], bn("bn_1", BatchNormParam::Gamma));
        assert_eq!(kinds[3], VariableKind::Other, "layer norm's gamma");
        assert!(kinds.iter().all(VariableKind::is_model));
        assert_eq!(kinds[5].tag(), "batch_norm");
        let d = classify("den_out/kernel");
        let vars = [("bn_1/beta", &kinds[0], 8), ("bn_1/moving_mean", &kinds[2], 8), ("ln/gamma", &kinds[3], 4), ("den_out/kernel", &d, 320)];
        let groups = non_bayesian(vars, &[]);
        assert_eq!(groups.len(), 3);
        assert_eq!(groups[0], NonBayesian { layer: "bn_1".into(), kind: "batch_norm", variables: vec!["bn_1/beta".into(), "bn_1/moving_mean".into()], values: 16 });
        assert_eq!((groups[1].layer.as_str(), groups[1].kind), ("ln", "other"));
        assert_eq!((groups[2].layer.as_str(), groups[2].kind, groups[2].values), ("den_out", "deterministic", 320));
        assert_eq!(non_bayesian([("den_out/kernel", &d, 320)], &["den_out"]), vec![]);
    }

    #[test]
    fn groups_layers_in_order() {
        let names = [
            "den_2/kernel_posterior_loc",
            "den_1/kernel_posterior_loc",
            "den_1/kernel_posterior_untransformed_scale",
            "den_1/bias_posterior_loc",
            "den_1/kernel_posterior_loc/RMSProp",
        ];
        let layers = group_layers(names.iter().map(|n| (*n, *n)));
        assert_eq!(layers.len(), 2);
        assert_eq!(layers[0].name, "den_2");
        assert!(!layers[0].is_bayesian());
        assert!(layers[1].is_bayesian());
        assert_eq!(layers[1].get(Param::BiasLoc), Some("den_1/bias_posterior_loc"));
    }
}

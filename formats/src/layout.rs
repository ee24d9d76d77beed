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
    /// Anything else: kept with the model.
    Other,
}

impl VariableKind {
    /// Whether the variable is part of the model (kept without `--include-optimizer`).
    pub fn is_model(&self) -> bool {
        matches!(self, VariableKind::Weight { .. } | VariableKind::Other)
    }
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
        if !of.is_empty() && (TF1_SLOTS.contains(&slot) || matches!(classify(of), VariableKind::Weight { .. })) {
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

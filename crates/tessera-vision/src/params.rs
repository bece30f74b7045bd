//! Moving module tensors to and from `tessera_core::ModelParams` by their
//! dotted module path (`head.weight`, `backbone.blocks.15.project_conv.weight`).
//! Paths come from the module tree itself, so they are stable as long as the
//! field names are.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Gradients, Tensor, TensorData};
use std::collections::HashMap;
use tessera_core::{ModelParams, ParamTensor};

use crate::error::{Result, VisionError};

/// Tracks the dotted path of the value being visited; enum variant names
/// are not part of a path (the same convention as burn-store).
#[derive(Default)]
struct PathStack(Vec<String>);

impl PathStack {
    fn enter(&mut self, name: &str, container: &str) {
        if !container.starts_with("Enum:") {
            self.0.push(name.to_string());
        }
    }
    fn exit(&mut self, container: &str) {
        if !container.starts_with("Enum:") {
            self.0.pop();
        }
    }
    fn path(&self) -> String {
        self.0.join(".")
    }
}

struct Collect<'a> {
    path: PathStack,
    keep: &'a dyn Fn(&str) -> bool,
    out: Vec<ParamTensor>,
    error: Option<VisionError>,
}

impl ModuleVisitor for Collect<'_> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _name: &str, container: &str) {
        self.path.exit(container);
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let name = self.path.path();
        if !(self.keep)(&name) || self.error.is_some() {
            return;
        }
        let tensor = param.val();
        let shape = tensor.dims().to_vec();
        match tensor.into_data().try_into_vec::<f32>() {
            Ok(data) => self.out.push(ParamTensor { name, shape, data }),
            Err(e) => self.error = Some(VisionError::Tensor(format!("{name}: {e:?}"))),
        }
    }
}

/// Every float tensor of `module` whose path satisfies `keep`, in module order.
pub(crate) fn collect_params<M: Module>(module: &M, keep: &dyn Fn(&str) -> bool) -> Result<ModelParams> {
    let mut v = Collect { path: PathStack::default(), keep, out: Vec::new(), error: None };
    module.visit(&mut v);
    match v.error {
        Some(e) => Err(e),
        None => Ok(ModelParams::new(v.out)),
    }
}

struct Grads<'a> {
    path: PathStack,
    keep: &'a dyn Fn(&str) -> bool,
    grads: &'a Gradients,
    out: Vec<f32>,
    error: Option<VisionError>,
}

impl ModuleVisitor for Grads<'_> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _name: &str, container: &str) {
        self.path.exit(container);
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let name = self.path.path();
        if !(self.keep)(&name) || self.error.is_some() {
            return;
        }
        let t = param.val();
        let n = t.shape().num_elements();
        match t.grad(self.grads).map(|g| g.into_data().try_into_vec::<f32>()) {
            Some(Ok(v)) if v.len() == n => self.out.extend(v),
            Some(_) => self.error = Some(VisionError::Tensor(format!("{name}: unreadable gradient"))),
            None => self.out.extend(std::iter::repeat_n(0.0, n)),
        }
    }
}

/// The gradients of the tensors of `module` whose path satisfies `keep`,
/// flat in module order (the layout of [`collect_params`]'s `to_flat`), zeros
/// where the loss does not reach a tensor.
pub(crate) fn collect_grads<M: Module>(module: &M, grads: &Gradients, keep: &dyn Fn(&str) -> bool) -> Result<Vec<f32>> {
    let mut v = Grads { path: PathStack::default(), keep, grads, out: Vec::new(), error: None };
    module.visit(&mut v);
    match v.error {
        Some(e) => Err(e),
        None => Ok(v.out),
    }
}

struct Ids<'a> {
    path: PathStack,
    keep: &'a dyn Fn(&str) -> bool,
    out: Vec<(String, ParamId)>,
}

impl ModuleVisitor for Ids<'_> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _name: &str, container: &str) {
        self.path.exit(container);
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let name = self.path.path();
        if (self.keep)(&name) {
            self.out.push((name, param.id));
        }
    }
}

/// Path and parameter id of every float tensor of `module` whose path
/// satisfies `keep`, in module order (the order of [`collect_params`]).
pub(crate) fn param_ids<M: Module>(module: &M, keep: &dyn Fn(&str) -> bool) -> Vec<(String, ParamId)> {
    let mut v = Ids { path: PathStack::default(), keep, out: Vec::new() };
    module.visit(&mut v);
    v.out
}

struct Assign<'a> {
    path: PathStack,
    values: HashMap<&'a str, &'a ParamTensor>,
    used: usize,
    error: Option<VisionError>,
}

impl ModuleMapper for Assign<'_> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.path.enter(name, container);
    }
    fn exit_module(&mut self, _name: &str, container: &str) {
        self.path.exit(container);
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.path();
        let Some(src) = self.values.get(name.as_str()).copied() else {
            return param;
        };
        self.used += 1;
        let expected = param.val().dims().to_vec();
        if src.shape != expected || src.data.len() != expected.iter().product::<usize>() {
            self.error.get_or_insert(VisionError::ParamShape { name, expected, actual: src.shape.clone() });
            return param;
        }
        param.map(|t| {
            let device = t.device();
            let fresh = Tensor::<D>::from_data(TensorData::new(src.data.clone(), src.shape.clone()), &device);
            fresh.set_require_grad(t.is_require_grad())
        })
    }
}

/// Writes `params` into the tensors of `module` with the same paths.
/// Every name in `params` must exist in the module with the same shape.
pub(crate) fn assign_params<M: Module>(module: M, params: &ModelParams) -> Result<M> {
    let values: HashMap<&str, &ParamTensor> = params.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut m = Assign { path: PathStack::default(), values, used: 0, error: None };
    let module = module.map(&mut m);
    if let Some(e) = m.error {
        return Err(e);
    }
    if m.used != params.tensors.len() {
        // Find a name the module does not have, for the message.
        let known = collect_params(&module, &|_| true)?;
        let name =
            params.tensors.iter().find(|t| known.get(&t.name).is_none()).map(|t| t.name.clone()).unwrap_or_default();
        return Err(VisionError::UnknownParam { name });
    }
    Ok(module)
}

//! Activation checkpointing (`nn::checkpoint`) changes memory, never results: a UNet with
//! it gives the same outputs and the same gradients, to its input and to every LoRA
//! adapter, as without; a checkpointed function that holds a parameter still trains it.

use crate::common;

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::max_abs_diff;
use sqdf::models::{DownBlockType::*, UNet2DConditionModel, UNetConfig, UpBlockType::*};
use sqdf::nn::checkpoint::checkpoint;
use sqdf::nn::{LoraBuilder, LoraConfig};
use sqdf::rng::{randn, seeded};
use sqdf::tensor_io::sorted_vars;
use std::collections::HashMap;
use std::sync::Arc;

const DEV: Device = Device::Cpu;

fn config() -> UNetConfig {
    UNetConfig {
        sample_size: 8,
        in_channels: 2,
        out_channels: 2,
        block_out_channels: vec![8, 16],
        down_block_types: vec![CrossAttnDown, CrossAttnDown],
        up_block_types: vec![CrossAttnUp, CrossAttnUp],
        layers_per_block: 1,
        cross_attention_dim: 8,
        attention_head_dim: 2,
        norm_num_groups: 4,
        norm_eps: 1e-5,
        use_linear_projection: false,
        num_class_embeds: None,
    }
}

/// Random frozen base weights (plain tensors) in f64.
fn base(cfg: &UNetConfig) -> HashMap<String, Tensor> {
    let vm = VarMap::new();
    UNet2DConditionModel::new(VarBuilder::from_varmap(&vm, DType::F32, &DEV), cfg, None).unwrap();
    sqdf::nn::init::seeded_init(&vm, &mut seeded(3)).unwrap();
    sorted_vars(&vm)
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().to_dtype(DType::F64).unwrap().detach()))
        .collect()
}

/// The gradients of sum(out * w) with respect to the input and every adapter, with and
/// without checkpointing, for a UNet with adapters on attention (and convs) or none.
fn compare(lora: Option<LoraConfig>) {
    let cfg = config();
    let vb = VarBuilder::from_tensors(base(&cfg), DType::F64, &DEV);
    let lora_vm = VarMap::new();
    let adapted = lora.is_some();
    let lb = lora.map(|c| LoraBuilder::new(c, VarBuilder::from_varmap(&lora_vm, DType::F64, &DEV)));
    let plain = UNet2DConditionModel::new(vb, &cfg, lb.as_ref()).unwrap();
    let mut rng = seeded(4);
    for (name, v) in sorted_vars(&lora_vm) {
        if name.ends_with("lora_B.weight") {
            v.set(
                &(randn(&mut rng, v.shape(), &DEV)
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    * 0.1)
                    .unwrap(),
            )
            .unwrap();
        }
    }
    let ck = plain.clone().with_checkpointing(true);
    let f64 = |t: Tensor| t.to_dtype(DType::F64).unwrap();
    let x = Var::from_tensor(&f64(randn(&mut rng, (2, 2, 8, 8), &DEV).unwrap())).unwrap();
    let t = Tensor::new(&[17f32, 650.0], &DEV).unwrap();
    let ctx = f64(randn(&mut rng, (2, 3, 8), &DEV).unwrap());
    let w = f64(randn(&mut rng, (2, 2, 8, 8), &DEV).unwrap());
    let run = |m: &UNet2DConditionModel| {
        let out = m.forward(x.as_tensor(), &t, &ctx).unwrap();
        let grads = (&out * &w).unwrap().sum_all().unwrap().backward().unwrap();
        (out, grads)
    };
    let (out_a, g_a) = run(&plain);
    let (out_b, g_b) = run(&ck);
    assert_eq!(
        max_abs_diff(&out_a, &out_b),
        0.0,
        "checkpointing changed the output"
    );
    let mut compared = 0;
    for (name, var) in
        std::iter::once(("input".to_string(), x.clone())).chain(sorted_vars(&lora_vm))
    {
        let a = g_a
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient without checkpointing"));
        let b = g_b
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient with checkpointing"));
        let scale = a
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(scale > 0.0, "{name}: zero gradient, nothing compared");
        let d = max_abs_diff(a, b);
        assert!(
            d <= 1e-10 * scale.max(1.0),
            "{name}: gradients differ by {d} (scale {scale})"
        );
        compared += 1;
    }
    assert!(compared > 1 || !adapted);
}

#[test]
fn frozen_unet_gives_the_same_input_gradient() {
    compare(None);
}

#[test]
fn attention_adapters_get_the_same_gradients() {
    compare(Some(LoraConfig {
        rank: 2,
        alpha: 2.0,
        convs: false,
    }));
}

#[test]
fn conv_adapters_get_the_same_gradients() {
    // The resnets hold adapters: checkpointing must not swallow their gradients.
    compare(Some(LoraConfig {
        rank: 2,
        alpha: 2.0,
        convs: true,
    }));
}

#[test]
fn a_function_with_a_parameter_still_trains_it() {
    let w = Var::new(&[[1.5f64, -0.5], [0.25, 2.0]], &DEV).unwrap();
    let x = Var::new(&[[1.0f64, 2.0]], &DEV).unwrap();
    let lin = candle_nn::Linear::new(w.as_tensor().clone(), None);
    let y = checkpoint(x.as_tensor(), Arc::new(move |x| lin.forward(x)?.tanh())).unwrap();
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(
        grads.get(w.as_tensor()).is_some(),
        "the parameter lost its gradient"
    );
    assert!(grads.get(x.as_tensor()).is_some());
}

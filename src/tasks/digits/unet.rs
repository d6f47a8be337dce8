//! `sqdf pretrain digits`: the class-conditional UNet, trained with Eq. 3 on the training
//! split with prompt dropout (10% of labels become the null prompt, for guidance), and its
//! card: how many of its guided 50-step samples the classifier reads as the prompted class.

use super::eval_cache::{self, CacheKey};
use super::evaluate::{sample_all, PER_PROMPT, PROMPTS};
use super::process::{sampler, schedule};
use super::{classifier, data, EVAL_SEED, UNET_FILE};
use crate::eval::image_grid::save_grid;
use crate::models::class_conditional::{ClassConditionalConfig, ClassConditionalUNet, NULL_PROMPT};
use crate::models::guidance::Guided;
use crate::rng::seeded;
use crate::tasks::{cond_tensor, TaskModels, TrainCommand};
use crate::tensor_io::save_varmap;
use crate::train::pretrain::{train_denoiser, PretrainSettings};
use anyhow::Result;
use candle_core::{Device, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use rand::Rng as _;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

pub const DEFAULT_STEPS: usize = 4000;
const BATCH: usize = 64;
/// Share of training labels replaced by the null prompt (classifier-free guidance).
const PROMPT_DROPOUT: f64 = 0.1;
/// EMA decay of the shipped weights: over the last ~500 steps.
const EMA: f64 = 0.998;
/// Guidance of the quality check (the paper's 5.0).
const GUIDANCE: f64 = 5.0;

/// The evaluation protocol's samples of the guided UNet (scale 5.0, 50 steps, η = 1,
/// `config.seed` 0), saved as the evaluation cache of `dir`; their classifier accuracy per
/// class, and a grid of 8 per class.
pub fn guided_accuracy(
    net: Arc<ClassConditionalUNet>,
    dir: &std::path::Path,
    device: &Device,
    grid: &std::path::Path,
) -> Result<(f64, Vec<f64>)> {
    let clf = classifier::load(dir, device)?;
    let s = schedule();
    let guided: Arc<dyn crate::models::Denoiser> = Arc::new(Guided {
        inner: net,
        scale: GUIDANCE,
        null: NULL_PROMPT,
    });
    let models = TaskModels {
        device: device.clone(),
        sampler: sampler(&s, 50, 1.0),
        schedule: s,
        state_shape: vec![1, 28, 28],
        policy: guided.clone(),
        policy_vars: VarMap::new(),
        policy_no_grad: None,
        reference: guided.clone(),
        consistency: None,
        rewards: Vec::new(),
        features: None,
        previous: None,
    };
    let (samples, _) = sample_all(&models, guided.as_ref(), false, EVAL_SEED, PER_PROMPT)?;
    let key = CacheKey {
        protocol: eval_cache::PROTOCOL,
        unet: eval_cache::file_fingerprint(&dir.join(UNET_FILE))?,
        steps: 50,
        eta: 1.0,
        guidance: GUIDANCE,
        seed: EVAL_SEED,
    };
    eval_cache::save(dir, &key, PER_PROMPT, &samples)?;
    let (mut per, mut cells) = (Vec::new(), Vec::new());
    for class in 0..PROMPTS {
        let x0 = samples.narrow(0, class * PER_PROMPT, PER_PROMPT)?;
        let pred = clf
            .forward_all(&x0)?
            .logits
            .argmax(D::Minus1)?
            .to_vec1::<u32>()?;
        per.push(pred.iter().filter(|&&p| p == class as u32).count() as f64 / PER_PROMPT as f64);
        cells.push(x0.narrow(0, 0, 8)?);
    }
    save_grid(grid, &Tensor::cat(&cells, 0)?, PROMPTS, 8, 2)?;
    Ok((per.iter().sum::<f64>() / PROMPTS as f64, per))
}

pub fn run(cmd: &TrainCommand) -> Result<()> {
    let out = cmd.out_dir("digits");
    std::fs::create_dir_all(&out)?;
    let device = &cmd.device;
    let (train, _) = data(device)?;
    let cfg = ClassConditionalConfig::digits();
    let varmap = VarMap::new();
    let model = ClassConditionalUNet::new(
        VarBuilder::from_varmap(&varmap, crate::DTYPE, device),
        &cfg,
        None,
    )?;
    let mut rng = seeded(cmd.seed);
    crate::nn::init::seeded_init(&varmap, &mut rng)?;
    // A continuation starts from a file's weights, at a lower peak learning rate.
    let earlier = match &cmd.init {
        Some(path) => Some(load_into(&varmap, path, device)?),
        None => None,
    };
    let s = PretrainSettings {
        steps: cmd.steps.unwrap_or(DEFAULT_STEPS),
        batch: BATCH,
        lr: if earlier.is_some() { 3e-4 } else { 1e-3 },
        weight_decay: 0.0,
        warmup: if earlier.is_some() { 50 } else { 200 },
        ema: Some(EMA),
    };
    let bar = cmd.bar(s.steps, "pretrain digits");
    let start = Instant::now();
    let data = |rng: &mut crate::rng::Rng, n: usize| {
        let (x, labels) = train.batch(n, rng)?;
        let cond: Vec<u32> = labels
            .iter()
            .map(|&l| {
                if rng.random::<f64>() < PROMPT_DROPOUT {
                    NULL_PROMPT
                } else {
                    l
                }
            })
            .collect();
        Ok((x, cond_tensor(&cond, device)?))
    };
    let final_loss = train_denoiser(&model, &varmap, &schedule(), data, &s, &mut rng, &bar)?;
    bar.finish_and_clear();
    cmd.log.set_bar(None);
    let seconds = start.elapsed().as_secs_f64();
    let (history, total_seconds) = history(cmd, s.steps, seconds, earlier.as_ref());
    let path = out.join(UNET_FILE);
    let meta = HashMap::from([
        ("config".to_string(), serde_json::to_string(&cfg)?),
        (
            "kind".to_string(),
            "digits class-conditional UNet (eps-prediction)".to_string(),
        ),
        ("made_by".to_string(), history.clone()),
        ("seconds".to_string(), format!("{total_seconds:.0}")),
    ]);
    save_varmap(&path, &varmap, meta)?;
    let params: usize = crate::tensor_io::sorted_vars(&varmap)
        .iter()
        .map(|(_, v)| v.elem_count())
        .sum();

    let grid = out.join("unet_samples.png");
    let (acc, per) = guided_accuracy(Arc::new(model), &out, device, &grid)?;
    cmd.log.info(format!(
        "UNet trained in {seconds:.0} s: guided samples classified as their prompt {:.1}%",
        100.0 * acc
    ));
    let card = card(
        &cfg,
        &s,
        &history,
        total_seconds,
        params,
        final_loss,
        acc,
        &per,
    )?;
    std::fs::write(out.join("unet.md"), card)?;
    cmd.log.info(format!(
        "wrote {}, {} and {}",
        path.display(),
        out.join("unet.md").display(),
        grid.display()
    ));
    Ok(())
}

/// What made a file a pretraining continues from (its metadata).
struct Earlier {
    made_by: String,
    seconds: f64,
}

/// Sets every variable of `varmap` from `path` (each key and shape checked by `set_vars`).
fn load_into(varmap: &VarMap, path: &std::path::Path, device: &Device) -> Result<Earlier> {
    let file = crate::tensor_io::read(path, device)?;
    crate::tensor_io::set_vars(varmap, &file.tensors, path)?;
    let meta = |k: &str| file.metadata.get(k).cloned();
    Ok(Earlier {
        made_by: meta("made_by").unwrap_or_else(|| "an unrecorded command".into()),
        seconds: meta("seconds").and_then(|s| s.parse().ok()).unwrap_or(0.0),
    })
}

/// Every command that made the file, each with its time (what made the starting file of a
/// continuation, then this one), and the total seconds.
fn history(
    cmd: &TrainCommand,
    steps: usize,
    seconds: f64,
    earlier: Option<&Earlier>,
) -> (String, f64) {
    let mut command = format!("sqdf pretrain digits --steps {} --seed {}", steps, cmd.seed);
    if let Some(path) = &cmd.init {
        command.push_str(&format!(" --init {}", path.display()));
    }
    // The whole history, each command with its time: what made the starting file, then this.
    match earlier {
        Some(e) if e.made_by.ends_with(" s)") => (
            format!("{}, then {command} ({seconds:.0} s)", e.made_by),
            e.seconds + seconds,
        ),
        Some(e) => (
            format!(
                "{} ({:.0} s), then {command} ({seconds:.0} s)",
                e.made_by, e.seconds
            ),
            e.seconds + seconds,
        ),
        None => (format!("{command} ({seconds:.0} s)"), seconds),
    }
}

/// unet.md: how the model was made and what its guided samples reach.
#[allow(clippy::too_many_arguments)]
fn card(
    cfg: &ClassConditionalConfig,
    s: &PretrainSettings,
    history: &str,
    total_seconds: f64,
    params: usize,
    final_loss: f64,
    acc: f64,
    per: &[f64],
) -> Result<String> {
    let per: Vec<String> = per
        .iter()
        .enumerate()
        .map(|(c, a)| format!("{c}: {:.0}%", 100.0 * a))
        .collect();
    Ok(format!(
        "# digits UNet (`{UNET_FILE}`)\n\n\
         The \"text-to-image\" model of the digits benchmark: a diffusers-style UNet2DConditionModel in pixel space (28x28, one channel), whose prompt (a class, or the null prompt) is a learned sequence of {tokens} context vectors read by cross-attention.\n\n\
         ## How it was made\n\
         - Commands, in order: {history}; {total_seconds:.0} s in all on this project's 2-core CPU machine, release build.\n\
         - Network: {params} parameters; {unet}.\n\
         - Training: noise-prediction loss (Eq. 3), DDPM linear β over 1000 steps, on the 9,000-digit training split, {PROMPT_DROPOUT} of labels replaced by the null prompt; {steps} AdamW steps of {BATCH} in this command, peak lr {lr} ({warmup} warm-up, cosine to a tenth; a continuation peaks at 3e-4), weights averaged with EMA decay {EMA}. Final loss (mean of the last 10%): {final_loss:.4}.\n\n\
         ## What it reaches\n\
         Guided samples (scale {GUIDANCE}, 50-step trailing DDIM grid, η = 1), {PER_PROMPT} per class from the evaluation's fixed seeds, read by the shipped classifier (`classifier.md`): **{acc:.1}%** classified as the prompted class. Per class: {per}.\n\n\
         ![samples](unet_samples.png)\n",
        tokens = cfg.tokens,
        unet = serde_json::to_string(&cfg.unet)?,
        steps = s.steps,
        lr = s.lr,
        warmup = s.warmup,
        acc = 100.0 * acc,
        per = per.join(", "),
    ))
}

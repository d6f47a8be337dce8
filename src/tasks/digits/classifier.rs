//! `sqdf pretrain digits-classifier`: the evaluation classifier, trained on the training
//! split with random shifts of up to 2 pixels, measured on the held-out split.

use super::{data, CLASSIFIER_FILE};
use crate::data::augment::random_shift;
use crate::models::classifier::{Classifier, ClassifierConfig};
use crate::rng::seeded;
use crate::tasks::TrainCommand;
use crate::tensor_io::{build_frozen, read, save_varmap};
use crate::train::pretrain::PretrainSettings;
use crate::train::supervised::{cross_entropy, fit};
use anyhow::{Context, Result};
use candle_core::{Device, Module, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

pub const DEFAULT_STEPS: usize = 1500;
const BATCH: usize = 128;

/// Loads the shipped classifier (frozen).
pub fn load(dir: &Path, device: &Device) -> Result<Classifier> {
    let path = dir.join(CLASSIFIER_FILE);
    let file = read(&path, device).context("`sqdf pretrain digits-classifier` makes it")?;
    let cfg: ClassifierConfig = match file.metadata.get("config") {
        Some(c) => serde_json::from_str(c)?,
        None => ClassifierConfig::default(),
    };
    build_frozen(&path, &file, device, |vb| Classifier::new(vb, &cfg))
}

/// Accuracy per class and overall of `model` on images with labels, in batches.
pub fn accuracy(model: &Classifier, images: &Tensor, labels: &[u32]) -> Result<(f64, Vec<f64>)> {
    let mut hits = [0usize; 10];
    let mut counts = [0usize; 10];
    for start in (0..labels.len()).step_by(256) {
        let n = 256.min(labels.len() - start);
        let pred = model
            .forward_all(&images.narrow(0, start, n)?)?
            .logits
            .argmax(D::Minus1)?
            .to_vec1::<u32>()?;
        for (p, &l) in pred.iter().zip(&labels[start..start + n]) {
            counts[l as usize] += 1;
            hits[l as usize] += usize::from(*p == l);
        }
    }
    let per: Vec<f64> = hits
        .iter()
        .zip(&counts)
        .map(|(h, c)| *h as f64 / (*c).max(1) as f64)
        .collect();
    Ok((hits.iter().sum::<usize>() as f64 / labels.len() as f64, per))
}

pub fn run(cmd: &TrainCommand) -> Result<()> {
    let out = cmd.out_dir("digits");
    std::fs::create_dir_all(&out)?;
    let device = &cmd.device;
    let (train, held) = data(device)?;
    let cfg = ClassifierConfig::default();
    let varmap = VarMap::new();
    let model = Classifier::new(VarBuilder::from_varmap(&varmap, crate::DTYPE, device), &cfg)?;
    let mut rng = seeded(cmd.seed);
    crate::nn::init::seeded_init(&varmap, &mut rng)?;
    let s = PretrainSettings {
        steps: cmd.steps.unwrap_or(DEFAULT_STEPS),
        batch: BATCH,
        lr: 2e-3,
        weight_decay: 1e-4,
        warmup: 100,
        ema: None,
    };
    let bar = cmd.bar(s.steps, "pretrain digits-classifier");
    let start = Instant::now();
    let final_loss = fit(
        &varmap,
        &s,
        |rng, _| {
            let (x, y) = train.batch(BATCH, rng)?;
            cross_entropy(&model.forward(&random_shift(&x, 2, rng)?)?, &y)
        },
        &mut rng,
        &bar,
    )?;
    bar.finish_and_clear();
    cmd.log.set_bar(None);
    let seconds = start.elapsed().as_secs_f64();
    let command = format!(
        "sqdf pretrain digits-classifier --steps {} --seed {}",
        s.steps, cmd.seed
    );
    let path = out.join(CLASSIFIER_FILE);
    let meta = HashMap::from([
        ("config".to_string(), serde_json::to_string(&cfg)?),
        ("made_by".to_string(), command.clone()),
    ]);
    save_varmap(&path, &varmap, meta)?;

    let (acc, per) = accuracy(&model, &held.images, &held.labels)?;
    let (train_acc, _) = accuracy(&model, &train.images, &train.labels)?;
    cmd.log.info(format!(
        "classifier trained in {seconds:.0} s: held-out accuracy {:.2}%",
        100.0 * acc
    ));
    let per: Vec<String> = per
        .iter()
        .enumerate()
        .map(|(c, a)| format!("{c}: {:.0}%", 100.0 * a))
        .collect();
    let card = format!(
        "# digits classifier (`{CLASSIFIER_FILE}`)\n\n\
         The evaluation network of the digits benchmark: alignment (probability and accuracy of the prompted class), the feature diversity (mean pairwise cosine distance of its {hidden}-d penultimate features, the DreamSim analogue), the LPIPS analogue (its first layer's channel-normalised features) and the Fréchet distance of its penultimate features to held-out real digits.\n\n\
         ## How it was made\n\
         - Command: `{command}` ({seconds:.0} s on this project's 2-core CPU machine, release build).\n\
         - Network: three 3x3 convolutions ({c:?} channels; strides 1, 2, 2), SiLU, a {hidden}-unit layer, 10 logits.\n\
         - Training: cross-entropy on the 9,000-digit training split (data/README.md) with random shifts of up to 2 pixels, {steps} AdamW steps of {BATCH}, lr 2e-3 (100 warm-up steps, cosine to 2e-4), weight decay 1e-4. Final loss (mean of the last 10%): {final_loss:.4}.\n\n\
         ## What it reaches\n\
         - Held-out accuracy (1,000 digits, 100 per class): **{acc:.2}%**; training split: {train_acc:.2}%.\n\
         - Per class (held out): {per}.\n",
        hidden = cfg.hidden,
        c = cfg.channels,
        steps = s.steps,
        acc = 100.0 * acc,
        train_acc = 100.0 * train_acc,
        per = per.join(", "),
    );
    std::fs::write(out.join("classifier.md"), card)?;
    cmd.log.info(format!(
        "wrote {} and {}",
        path.display(),
        out.join("classifier.md").display()
    ));
    Ok(())
}

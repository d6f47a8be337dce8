//! `sqdf pretrain digits-reward`: the learned reward, a CNN trained to predict the gold
//! score (stroke boldness, `rewards::gold`) of digits of every boldness: training digits
//! dilated or eroded up to twice, with random contrast and a little noise.

use super::{data, EVAL_SEED, REWARD_FILE};
use crate::data::augment::vary_boldness;
use crate::models::reward_net::{RewardNet, RewardNetConfig};
use crate::rewards::gold::boldness;
use crate::rng::seeded;
use crate::tasks::TrainCommand;
use crate::tensor_io::{build_frozen, read, save_varmap};
use crate::train::pretrain::PretrainSettings;
use crate::train::supervised::fit;
use anyhow::{Context, Result};
use candle_core::{Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

pub const DEFAULT_STEPS: usize = 1500;
const BATCH: usize = 128;

/// Loads the shipped reward model (frozen).
pub fn load(dir: &Path, device: &Device) -> Result<RewardNet> {
    let path = dir.join(REWARD_FILE);
    let file = read(&path, device).context("`sqdf pretrain digits-reward` makes it")?;
    let cfg: RewardNetConfig = match file.metadata.get("config") {
        Some(c) => serde_json::from_str(c)?,
        None => RewardNetConfig::default(),
    };
    build_frozen(&path, &file, device, |vb| RewardNet::new(vb, &cfg))
}

/// (RMSE, Pearson correlation) of predictions against targets.
pub fn agreement(pred: &[f32], gold: &[f32]) -> (f64, f64) {
    let n = pred.len() as f64;
    let (mp, mg) = (
        pred.iter().sum::<f32>() as f64 / n,
        gold.iter().sum::<f32>() as f64 / n,
    );
    let (mut sxy, mut sxx, mut syy, mut se) = (0.0, 0.0, 0.0, 0.0);
    for (&p, &g) in pred.iter().zip(gold) {
        let (dp, dg) = (p as f64 - mp, g as f64 - mg);
        sxy += dp * dg;
        sxx += dp * dp;
        syy += dg * dg;
        se += (p as f64 - g as f64).powi(2);
    }
    ((se / n).sqrt(), sxy / (sxx * syy).sqrt().max(1e-12))
}

fn predict(model: &RewardNet, x: &Tensor) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for start in (0..x.dim(0)?).step_by(256) {
        let n = 256.min(x.dim(0)? - start);
        out.extend(model.forward(&x.narrow(0, start, n)?)?.to_vec1::<f32>()?);
    }
    Ok(out)
}

pub fn run(cmd: &TrainCommand) -> Result<()> {
    let out = cmd.out_dir("digits");
    std::fs::create_dir_all(&out)?;
    let device = &cmd.device;
    let (train, held) = data(device)?;
    let cfg = RewardNetConfig::default();
    let varmap = VarMap::new();
    let model = RewardNet::new(VarBuilder::from_varmap(&varmap, crate::DTYPE, device), &cfg)?;
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
    let bar = cmd.bar(s.steps, "pretrain digits-reward");
    let start = Instant::now();
    let final_loss = fit(
        &varmap,
        &s,
        |rng, _| {
            let (x, _) = train.batch(BATCH, rng)?;
            let x = vary_boldness(&x, rng)?;
            Ok(model.forward(&x)?.sub(&boldness(&x)?)?.sqr()?.mean_all()?)
        },
        &mut rng,
        &bar,
    )?;
    bar.finish_and_clear();
    cmd.log.set_bar(None);
    let seconds = start.elapsed().as_secs_f64();
    let command = format!(
        "sqdf pretrain digits-reward --steps {} --seed {}",
        s.steps, cmd.seed
    );
    let path = out.join(REWARD_FILE);
    let meta = HashMap::from([
        ("config".to_string(), serde_json::to_string(&cfg)?),
        ("made_by".to_string(), command.clone()),
    ]);
    save_varmap(&path, &varmap, meta)?;

    let varied = vary_boldness(&held.images, &mut seeded(EVAL_SEED))?;
    let (rmse_v, r_v) = agreement(
        &predict(&model, &varied)?,
        &boldness(&varied)?.to_vec1::<f32>()?,
    );
    let plain_gold = boldness(&held.images)?.to_vec1::<f32>()?;
    let (rmse_p, r_p) = agreement(&predict(&model, &held.images)?, &plain_gold);
    let (lo, hi) = plain_gold
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &g| (a.min(g), b.max(g)));
    let mean = plain_gold.iter().sum::<f32>() / plain_gold.len() as f32;
    cmd.log.info(format!(
        "reward model trained in {seconds:.0} s: held-out RMSE {rmse_v:.4} (r = {r_v:.3}) on varied boldness, {rmse_p:.4} (r = {r_p:.3}) on plain digits"
    ));
    let card = format!(
        "# digits learned reward (`{REWARD_FILE}`)\n\n\
         A CNN that predicts the gold score, stroke boldness (`src/rewards/gold.rs`: the mean over pixels of sigmoid(10 (ink - 0.5)), in (0, 1)). It plays the LAION aesthetic predictor's role: a network whose gradient a fine-tuned model can exploit, so evaluations report it next to the gold score.\n\n\
         ## How it was made\n\
         - Command: `{command}` ({seconds:.0} s on this project's 2-core CPU machine, release build).\n\
         - Network: three 3x3 convolutions ({c:?} channels; strides 1, 2, 2), SiLU, {hidden} hidden units, one output.\n\
         - Training: mean squared error against the gold score of training-split digits made bolder or thinner (up to two 3x3 dilations or erosions), with contrast scaled by [0.5, 1] and N(0, 0.05²) noise; {steps} AdamW steps of {BATCH}, lr 2e-3 (100 warm-up, cosine to 2e-4), weight decay 1e-4. Final loss (mean of the last 10%): {final_loss:.6}.\n\n\
         ## What it reaches (held-out split, 1,000 digits)\n\
         | inputs | RMSE | Pearson r |\n|---|---|---|\n\
         | varied boldness (as in training, seed {EVAL_SEED:#x}) | {rmse_v:.4} | {r_v:.3} |\n\
         | plain held-out digits | {rmse_p:.4} | {r_p:.3} |\n\n\
         Gold score of plain held-out digits: mean {mean:.3}, range {lo:.3} to {hi:.3}.\n",
        c = cfg.channels,
        hidden = cfg.hidden,
        steps = s.steps,
    );
    std::fs::write(out.join("reward.md"), card)?;
    cmd.log.info(format!(
        "wrote {} and {}",
        path.display(),
        out.join("reward.md").display()
    ));
    Ok(())
}

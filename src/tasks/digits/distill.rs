//! `sqdf distill digits`: a consistency model distilled from the guided digits UNet (the
//! ODE of the guided teacher, scale 5.0, as the policy samples with guidance), with a card
//! comparing its one-step x0 with Tweedie's against the 50-step ODE solution over t.

use super::process::{distillation_grid, load_unet, sampler, schedule};
use super::{data, CONSISTENCY_FILE, EVAL_SEED, UNET_FILE};
use crate::data::mnist::Digits;
use crate::diffusion::consistency::BoundaryScalings;
use crate::diffusion::{add_noise, tweedie, DdimSampler};
use crate::eval::image_grid::save_grid;
use crate::models::class_conditional::{ClassConditionalUNet, NULL_PROMPT};
use crate::models::guidance::Guided;
use crate::models::{ConsistencyModel, Denoiser};
use crate::rng::{randn, seeded};
use crate::tasks::{cond_tensor, TrainCommand};
use crate::tensor_io::{build_trainable, read, save_varmap};
use crate::train::distill::{distill, DistillSettings};
use crate::train::pretrain::PretrainSettings;
use crate::train::rollout;
use anyhow::Result;
use candle_core::Tensor;
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

pub const DEFAULT_STEPS: usize = 2000;
const BATCH: usize = 32;
/// The teacher's guidance scale: the policy samples with guidance 5 (config `guidance`).
pub const GUIDANCE: f64 = 5.0;
/// Remaining steps (of 50) at which the card compares one-step estimates.
pub const REPORT_T: [usize; 5] = [45, 35, 25, 15, 5];

fn mean_dist(a: &Tensor, b: &Tensor) -> Result<f64> {
    let n = a.dim(0)?;
    Ok(a.sub(b)?
        .reshape((n, ()))?
        .sqr()?
        .sum(1)?
        .sqrt()?
        .mean_all()?
        .to_scalar::<f32>()? as f64)
}

/// Held-out digits in the card's comparison (4 per class).
pub const CARD_DIGITS: usize = 40;

/// One-step x0 errors at `t` remaining steps of 50, against the guided ODE solution.
pub struct OneStepErrors {
    pub tweedie: f64,
    pub consistency: f64,
    /// The first 10 samples of the ODE solution, Tweedie's and the CM's x0 (for the grid).
    pub rows: Vec<Tensor>,
}

/// Forward-noises the first `n` held-out digits of the card's selection (digit i of class c
/// is held-out index 100c + i) to `t` of 50 with seed EVAL_SEED + t, solves the 50-step
/// guided ODE from there, and measures both one-step estimates against it. A test repeats
/// it for one `t` and checks the card's figure.
pub fn one_step_errors(
    teacher: &Guided,
    cm: &ConsistencyModel,
    held: &Digits,
    t: usize,
    n: usize,
) -> Result<OneStepErrors> {
    let device = held.images.device();
    let ode = sampler(&schedule(), 50, 0.0);
    let i = 50 - t;
    let a = ode.alpha_bar(i);
    let pick: Vec<u32> = (0..n as u32).map(|j| (j % 10) * 100 + j / 10).collect();
    let x_real = held
        .images
        .index_select(&Tensor::from_vec(pick.clone(), n, device)?, 0)?;
    let labels: Vec<u32> = pick.iter().map(|&j| held.labels[j as usize]).collect();
    let cond = cond_tensor(&labels, device)?;
    let mut rng = seeded(EVAL_SEED + t as u64);
    let noise = randn(&mut rng, x_real.shape(), device)?;
    let x_t = add_noise(&x_real, &noise, &vec![a; n])?;
    let (ode_x0, _) = rollout::denoise(teacher, &ode, x_t.clone(), i, &cond, &mut rng, false)?;
    let tt = ode.timesteps_tensor(&vec![i; n], device)?;
    let tw = tweedie::x0_from_eps_with(&x_t, &teacher.eps(&x_t, &tt, &cond)?, &vec![a; n])?;
    let cmx = cm.x0(&x_t, &vec![ode.timestep(i); n], &cond)?;
    let k = n.min(10);
    Ok(OneStepErrors {
        tweedie: mean_dist(&tw, &ode_x0)?,
        consistency: mean_dist(&cmx, &ode_x0)?,
        rows: vec![
            ode_x0.narrow(0, 0, k)?,
            tw.narrow(0, 0, k)?,
            cmx.narrow(0, 0, k)?,
        ],
    })
}

pub fn run(cmd: &TrainCommand) -> Result<()> {
    let out = cmd.out_dir("digits");
    let device = &cmd.device;
    let unet_path = out.join(UNET_FILE);
    let (teacher_net, cfg, _) = load_unet(&unet_path, device, "sqdf pretrain digits")?;
    let teacher = Guided {
        inner: Arc::new(teacher_net),
        scale: GUIDANCE,
        null: NULL_PROMPT,
    };
    let file = read(&unet_path, device)?;
    let build = |vb: VarBuilder| ClassConditionalUNet::new(vb, &cfg, None);
    let (student_net, student_vars) = build_trainable(&unet_path, &file, device, build)?;
    let (target_net, target_vars) = build_trainable(&unet_path, &file, device, build)?;
    let scalings = BoundaryScalings::default();
    let cm = |net: ClassConditionalUNet| ConsistencyModel {
        net: Arc::new(net),
        scalings,
        schedule: schedule(),
        grid: distillation_grid(),
    };
    let (student, target) = (cm(student_net), cm(target_net.clone()));
    let ode = sampler(&schedule(), 50, 0.0);
    let (train, held) = data(device)?;
    let s = DistillSettings {
        train: PretrainSettings {
            steps: cmd.steps.unwrap_or(DEFAULT_STEPS),
            batch: BATCH,
            lr: 2e-4,
            weight_decay: 0.0,
            warmup: 100,
            ema: None,
        },
        ema: 0.95,
    };
    let mut rng = seeded(cmd.seed);
    let bar = cmd.bar(s.train.steps, "distill digits");
    let start = Instant::now();
    let data_fn = |rng: &mut crate::rng::Rng, n: usize| {
        let (x, labels) = train.batch(n, rng)?;
        Ok((x, cond_tensor(&labels, device)?))
    };
    let final_loss = distill(
        &student,
        &student_vars,
        &target,
        &target_vars,
        &teacher,
        &ode,
        data_fn,
        &s,
        &mut rng,
        &bar,
    )?;
    bar.finish_and_clear();
    cmd.log.set_bar(None);
    let seconds = start.elapsed().as_secs_f64();
    let command = format!(
        "sqdf distill digits --steps {} --seed {}",
        s.train.steps, cmd.seed
    );
    let path = out.join(CONSISTENCY_FILE);
    let meta = HashMap::from([
        ("config".to_string(), serde_json::to_string(&cfg)?),
        ("scalings".to_string(), serde_json::to_string(&scalings)?),
        (
            "kind".to_string(),
            "digits consistency model (LCM form), distilled from the guided UNet".to_string(),
        ),
        ("made_by".to_string(), command.clone()),
    ]);
    save_varmap(&path, &target_vars, meta)?;
    drop(student_vars);

    let rows = measure(&teacher, &cm(target_net), &held, &ode, &out, cmd)?;
    let card = card(&command, seconds, s.train.steps, final_loss, &rows);
    std::fs::write(out.join("consistency.md"), card)?;
    cmd.log.info(format!(
        "wrote {} and {}",
        path.display(),
        out.join("consistency.md").display()
    ));
    Ok(())
}

/// The card's measurement: one-step x0 from held-out digits noised to each t of
/// `REPORT_T`, by Tweedie and by the consistency model, against the 50-step guided ODE;
/// draws consistency_grid.png and returns the table rows.
fn measure(
    teacher: &Guided,
    final_cm: &ConsistencyModel,
    held: &Digits,
    ode: &DdimSampler,
    out: &Path,
    cmd: &TrainCommand,
) -> Result<Vec<String>> {
    let (mut rows, mut cells) = (Vec::new(), Vec::new());
    for t in REPORT_T {
        let e = one_step_errors(teacher, final_cm, held, t, CARD_DIGITS)?;
        rows.push(format!(
            "| {t} | {} | {:.3} | {:.3} |",
            ode.timestep(50 - t),
            e.tweedie,
            e.consistency
        ));
        cmd.log.info(format!(
            "t = {t}: one-step error vs ODE, Tweedie {:.3}, consistency {:.3}",
            e.tweedie, e.consistency
        ));
        cells.extend(e.rows);
    }
    save_grid(
        &out.join("consistency_grid.png"),
        &Tensor::cat(&cells, 0)?,
        3 * REPORT_T.len(),
        10,
        2,
    )?;
    Ok(rows)
}

/// consistency.md: how the model was made and what it reaches.
fn card(command: &str, seconds: f64, steps: usize, final_loss: f64, rows: &[String]) -> String {
    format!(
        "# digits consistency model (`{CONSISTENCY_FILE}`)\n\n\
         f_ψ(x_t, t) = c_skip(t) x_t + c_out(t) x̂0(ε_ψ(x_t, t)) with LCM's boundary scalings, the one-step x0 estimator of SQDF's soft Q (§4.2.2). It runs without guidance and predicts where the guided (scale {GUIDANCE}) probability-flow ODE ends, as the policy samples with guidance.\n\n\
         ## How it was made\n\
         - Command: `{command}` ({seconds:.0} s on this project's 2-core CPU machine, release build), after `sqdf pretrain digits`.\n\
         - Consistency distillation on the 50-step grid from the guided UNet (`{UNET_FILE}`): one guided DDIM ODE step (η = 0) of the teacher from forward-noised training digits at grid state n to n+1; the student's f(x_n) is pulled to the EMA target's f(x_(n+1)) (x_(n+1) itself at the clean end). Student and target start from the teacher's weights; EMA 0.95; {steps} AdamW steps of {BATCH}, lr 2e-4. The EMA target ships. Final loss (mean of the last 10%): {final_loss:.5}.\n\n\
         ## What it reaches\n\
         Mean Euclidean distance (over 784 pixels in [-1, 1]) between one-step x0 estimates from x_t and the 50-step guided ODE solution from the same x_t, for {CARD_DIGITS} held-out digits (4 per class) noised to t, seed {EVAL_SEED:#x} + t:\n\n\
         | t of 50 | training timestep | Tweedie | consistency model |\n|---|---|---|---|\n{rows}\n\n\
         ![one-step estimates](consistency_grid.png)\n\n\
         `consistency_grid.png`: for each t above (top to bottom), three rows: the 50-step ODE solution, Tweedie's one-step x0, the consistency model's.\n",
        rows = rows.join("\n"),
    )
}

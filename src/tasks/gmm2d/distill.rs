//! `sqdf distill gmm2d`: a consistency model distilled from the toy's denoiser, with a card
//! that measures its one-step x0 against the 50-step ODE solution next to Tweedie's (the
//! numbers behind the paper's Fig. 2) and a picture like Fig. 2.

use super::{
    distillation_grid, load_frozen, sampler, schedule, CONSISTENCY_FILE, DENOISER_FILE, EVAL_SEED,
};
use crate::data::GaussianMixture;
use crate::diffusion::consistency::BoundaryScalings;
use crate::diffusion::{add_noise, tweedie, DdimSampler};
use crate::eval::scatter::{scatter_png, Panel};
use crate::models::{ConsistencyModel, Denoiser, ToyMlp};
use crate::rng::{randn, seeded};
use crate::tasks::{cond_tensor, TrainCommand};
use crate::tensor_io::{build_trainable, save_varmap};
use crate::train::distill::{distill, DistillSettings};
use crate::train::pretrain::PretrainSettings;
use crate::train::rollout;
use anyhow::{Context, Result};
use candle_core::Tensor;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

pub const DEFAULT_STEPS: usize = 6_000;
const BATCH: usize = 256;
/// The paper's Fig. 2 shows one-step estimates from t = 35, 25, 15 of 50 steps.
pub const FIG2_T: [usize; 3] = [35, 25, 15];

fn points(t: &Tensor) -> Result<Vec<[f64; 2]>> {
    Ok(t.to_vec2::<f32>()?
        .iter()
        .map(|p| [p[0] as f64, p[1] as f64])
        .collect())
}

fn mean_dist(a: &Tensor, b: &Tensor) -> Result<f64> {
    Ok(a.sub(b)?
        .sqr()?
        .sum(1)?
        .sqrt()?
        .mean_all()?
        .to_scalar::<f32>()? as f64)
}

pub fn run(cmd: &TrainCommand) -> Result<()> {
    let out = cmd.out_dir("gmm2d");
    let device = &cmd.device;
    let teacher_path = out.join(DENOISER_FILE);
    let (teacher, file) = load_frozen(&teacher_path, device, "sqdf pretrain gmm2d")?;
    let cfg = teacher.config().clone();
    // Student and EMA target both start from the teacher (as LCM starts from SD).
    let (student_net, student_vars) =
        build_trainable(&teacher_path, &file, device, |vb| ToyMlp::new(vb, &cfg))?;
    let (target_net, target_vars) =
        build_trainable(&teacher_path, &file, device, |vb| ToyMlp::new(vb, &cfg))?;
    let scalings = BoundaryScalings::default();
    let cm = |net: ToyMlp| ConsistencyModel {
        net: Arc::new(net),
        scalings,
        schedule: schedule(),
        grid: distillation_grid(),
    };
    let (student, target) = (cm(student_net), cm(target_net.clone()));
    let ode = sampler(&schedule(), 50, 0.0);
    let grid = GaussianMixture::paper_grid();
    let settings = DistillSettings {
        train: PretrainSettings {
            steps: cmd.steps.unwrap_or(DEFAULT_STEPS),
            batch: BATCH,
            lr: 5e-4,
            weight_decay: 0.0,
            warmup: 100,
            ema: None,
        },
        ema: 0.95,
    };
    let mut rng = seeded(cmd.seed);
    let bar = cmd.bar(settings.train.steps, "distill gmm2d");
    let start = Instant::now();
    let data = |rng: &mut crate::rng::Rng, n: usize| {
        Ok((
            grid.sample(n, rng, device)?,
            cond_tensor(&vec![0; n], device)?,
        ))
    };
    let final_loss = distill(
        &student,
        &student_vars,
        &target,
        &target_vars,
        &teacher,
        &ode,
        data,
        &settings,
        &mut rng,
        &bar,
    )?;
    bar.finish_and_clear();
    cmd.log.set_bar(None);
    let seconds = start.elapsed().as_secs_f64();

    // The EMA target is the consistency model that ships.
    let command = format!(
        "sqdf distill gmm2d --steps {} --seed {}",
        settings.train.steps, cmd.seed
    );
    let meta = HashMap::from([
        ("config".to_string(), serde_json::to_string(&cfg)?),
        ("scalings".to_string(), serde_json::to_string(&scalings)?),
        (
            "kind".to_string(),
            "gmm2d consistency model (LCM form, eps-prediction network)".to_string(),
        ),
        ("made_by".to_string(), command.clone()),
    ]);
    let path = out.join(CONSISTENCY_FILE);
    save_varmap(&path, &target_vars, meta).context("saving the consistency model")?;

    let rows = fig2(&teacher, &ode, &cm(target_net), &grid, &out, cmd)?;
    let card = card(
        &command,
        seconds,
        &scalings,
        settings.train.steps,
        final_loss,
        &rows,
    );
    std::fs::write(out.join("consistency.md"), card)?;
    cmd.log.info(format!(
        "wrote {}, {} and {}",
        path.display(),
        out.join("consistency.md").display(),
        out.join("fig2.png").display()
    ));
    Ok(())
}

/// The paper's Fig. 2 on the toy: one-step x0 estimates from x_t (forward-noised true data)
/// by Tweedie and by the consistency model, against the 50-step ODE solution from the same
/// x_t; draws fig2.png and returns the card's table rows.
fn fig2(
    teacher: &ToyMlp,
    ode: &DdimSampler,
    final_cm: &ConsistencyModel,
    grid: &GaussianMixture,
    out: &Path,
    cmd: &TrainCommand,
) -> Result<Vec<String>> {
    let device = &cmd.device;
    // One-step x0 from x_t (forward-noised true data) against the 50-step ODE solution.
    let n = 2000;
    let mut erng = seeded(EVAL_SEED);
    let cond = cond_tensor(&vec![0; n], device)?;
    let data_x0 = grid.sample(n, &mut erng, device)?;
    let ddpm = sampler(&schedule(), 50, 1.0);
    let (samples, _) = rollout::sample(teacher, &ddpm, &[2], &cond, &mut erng, false)?;
    let (ode_samples, _) = rollout::sample(teacher, ode, &[2], &cond, &mut erng, false)?;
    let mut rows = Vec::new();
    let mut tweedie_pts = Vec::new();
    let mut cm_pts = Vec::new();
    for t in FIG2_T {
        let i = 50 - t;
        let a = ode.alpha_bar(i);
        let noise = randn(&mut erng, (n, 2), device)?;
        let x_t = add_noise(&data_x0, &noise, &vec![a; n])?;
        let (ode_x0, _) = rollout::denoise(teacher, ode, x_t.clone(), i, &cond, &mut erng, false)?;
        let tt = ode.timesteps_tensor(&vec![i; n], device)?;
        let tw = tweedie::x0_from_eps_with(&x_t, &teacher.eps(&x_t, &tt, &cond)?, &vec![a; n])?;
        let cmx = final_cm.x0(&x_t, &vec![ode.timestep(i); n], &cond)?;
        let (e_tw, e_cm) = (mean_dist(&tw, &ode_x0)?, mean_dist(&cmx, &ode_x0)?);
        let ll = |p: &[[f64; 2]]| p.iter().map(|q| grid.log_prob(*q)).sum::<f64>() / p.len() as f64;
        let (tw_p, cm_p) = (points(&tw)?, points(&cmx)?);
        rows.push(format!(
            "| {t} | {} | {e_tw:.3} | {e_cm:.3} | {:.2} | {:.2} |",
            ode.timestep(i),
            ll(&tw_p),
            ll(&cm_p)
        ));
        cmd.log.info(format!(
            "t = {t}: one-step error vs ODE, Tweedie {e_tw:.3}, consistency {e_cm:.3}"
        ));
        tweedie_pts.push((t, tw_p));
        cm_pts.push((t, cm_p));
    }

    let truth = points(&data_x0)?;
    let (ddpm_p, ode_p) = (points(&samples)?, points(&ode_samples)?);
    let mut panels = vec![
        Panel {
            title: "data".into(),
            points: &truth,
            marks: &[],
        },
        Panel {
            title: "DDPM 50 steps (eta = 1)".into(),
            points: &ddpm_p,
            marks: &[],
        },
        Panel {
            title: "DDIM ODE 50 steps (eta = 0)".into(),
            points: &ode_p,
            marks: &[],
        },
    ];
    for (t, p) in &tweedie_pts {
        panels.push(Panel {
            title: format!("Tweedie one-step from t = {t}"),
            points: p,
            marks: &[],
        });
    }
    for (t, p) in &cm_pts {
        panels.push(Panel {
            title: format!("consistency one-step from t = {t}"),
            points: p,
            marks: &[],
        });
    }
    scatter_png(&out.join("fig2.png"), &panels, 3, 7.0)?;

    Ok(rows)
}

/// consistency.md: how the model was made and what it reaches.
fn card(
    command: &str,
    seconds: f64,
    scalings: &BoundaryScalings,
    steps: usize,
    final_loss: f64,
    rows: &[String],
) -> String {
    format!(
        "# gmm2d consistency model (`{CONSISTENCY_FILE}`)\n\n\
         f_ψ(x_t, t) = c_skip(t) x_t + c_out(t) x̂0(ε_ψ(x_t, t)), LCM's boundary scalings (σ_data {sd}, timestep scaling {ts}): f is the identity at t = 0.\n\n\
         ## How it was made\n\
         - Command: `{command}` ({seconds:.0} s on this project's 2-core CPU machine, release build), after `sqdf pretrain gmm2d`.\n\
         - Consistency distillation (Song et al. 2023) from `{DENOISER_FILE}` on the 50-step grid: one DDIM ODE step (η = 0) of the teacher from x at grid state n to n+1; the student's f(x_n) is pulled to the EMA target's f(x_(n+1)), and to x_(n+1) itself at the clean end. Student and target start from the teacher's weights; EMA 0.95; {steps} AdamW steps of {BATCH} samples, lr 5e-4. The EMA target ships. Final loss (mean of the last 10%): {final_loss:.5}.\n\n\
         ## What it reaches\n\
         One-step x0 estimates from x_t (2,000 forward-noised true samples, seed {EVAL_SEED:#x}) against the 50-step DDIM ODE solution from the same x_t: mean Euclidean distance (lower is better), and the mean log-likelihood of the estimates under the true mixture (true data: about -3.83).\n\n\
         | t of 50 | training timestep | Tweedie error | consistency error | Tweedie log-lik | consistency log-lik |\n|---|---|---|---|---|---|\n{rows}\n\n\
         ![Fig. 2](fig2.png)\n\n\
         `fig2.png`: top, data, 50-step DDPM and 50-step ODE samples; middle, Tweedie's one-step x0 from t = 35, 25, 15; bottom, the consistency model's (the paper's Fig. 2, second row).\n",
        sd = scalings.sigma_data,
        ts = scalings.timestep_scaling,
        rows = rows.join("\n"),
    )
}

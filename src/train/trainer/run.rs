//! A whole run: the evaluation before, the epochs with their evaluations along training,
//! the training curve and the evaluation after, into eval.json.

use super::*;

impl Trainer {
    /// Runs to `config.epochs` (a live key), then evaluates; returns eval.json's contents.
    pub fn run(&mut self) -> Result<EvalReport> {
        let cfg = self.script.config.clone();
        self.log.info(format!(
            "run folder {}; task {}, T = {}, batch {}, alpha {}, gamma {}, x0 {:?}, sampling {:?}",
            self.run_dir.display(),
            cfg.task,
            cfg.steps,
            cfg.batch,
            cfg.alpha,
            cfg.gamma,
            cfg.x0,
            cfg.sampling
        ));
        let started = Instant::now();
        if !self.leads() {
            return self.follow_run(started);
        }
        let before = self.evaluate_before()?;
        if cfg.evals > 0 && !self.evals.has(0) {
            // The curve's first point: the pretrained model at the along-training size.
            let m = self.evaluate_along_with(self.models.reference.as_ref(), 0)?;
            self.evals.append(0, &m)?;
        }
        let bar = self
            .log
            .progress(cfg.epochs as u64, "", "epochs", self.opts.progress);
        bar.set_position(self.epoch as u64);
        let result = self.train_epochs(&bar);
        bar.finish_and_clear();
        self.log.set_bar(None);
        result?;
        let curve = self.run_dir.join("training_curve.png");
        plot_training_curve(&self.run_dir.join("metrics.jsonl"), &curve)?;
        self.log.info(format!("wrote {}", curve.display()));
        self.log.info("evaluating the fine-tuned model");
        let stream = self.evaluation_stream(self.epoch);
        let after = self.with_queries(self.task.evaluate(
            &self.models,
            self.models.sampling_policy().as_ref(),
            &self.script,
            &self.run_dir,
            "after",
            &self.log,
            false,
        )?);
        drop(stream);
        if self.after_is_last_point() && !self.evals.has(self.epoch) {
            // The last along-training point (skipped in `evaluate_along`) is this evaluation.
            self.evals.append(self.epoch, &after)?;
        }
        let peak = crate::process_memory::peak_rss_mib();
        let eval = EvalReport {
            before,
            after,
            epochs: self.epoch,
            wall_seconds: started.elapsed().as_secs_f64(),
            peak_rss_mib: peak.is_finite().then_some(peak),
            script: self.script.path.display().to_string(),
            script_generation: self.generation,
            config: self.script.config.clone(),
            // `after` has it too (`with_queries`): the comparison's table reads it there.
            queries_used: self.rounds.as_ref().map(|r| r.oracle.used()),
            oracle_budget: self.rounds.as_ref().map(|r| r.oracle.budget()),
        };
        crate::tensor_io::write_file_atomic(
            &self.run_dir.join("eval.json"),
            serde_json::to_string_pretty(&eval.to_json())?,
        )?;
        self.log.info(format!(
            "wrote {}",
            self.run_dir.join("eval.json").display()
        ));
        Ok(eval)
    }

    fn train_epochs(&mut self, bar: &ProgressBar) -> Result<()> {
        // A run stopped between its checkpoint and that epoch's evaluation makes it up.
        if self.leads() {
            self.evaluate_along()?;
        }
        while self.epoch < self.script.config.epochs {
            if self.epoch > 0 {
                self.reload_on_every_rank()?;
            }
            bar.set_length(self.script.config.epochs as u64);
            let m = self.run_epoch()?;
            if self.leads() {
                self.save_checkpoint()?;
                self.evaluate_along()?;
            }
            bar.set_position(self.epoch as u64);
            bar.set_message(format!(
                "reward {:.3} ± {:.3}, kl {}, gen {}",
                m.reward_mean.unwrap_or(f64::NAN),
                m.reward_std.unwrap_or(f64::NAN),
                m.kl.map(|k| format!("{k:.4}"))
                    .unwrap_or_else(|| "-".into()),
                self.generation
            ));
        }
        Ok(())
    }

    /// The smaller evaluation after this epoch, if it is one of the `evals` evenly spaced
    /// ones, into evals.jsonl (the points of Fig. 3).
    fn evaluate_along(&self) -> Result<()> {
        let cfg = &self.script.config;
        if !along_training::eval_epochs(cfg.epochs, cfg.evals).contains(&self.epoch)
            || self.evals.has(self.epoch)
        {
            return Ok(());
        }
        if self.epoch == cfg.epochs && self.after_is_last_point() {
            // The evaluation after training draws these very samples; `run` records it here.
            return Ok(());
        }
        let m = self.evaluate_along_with(self.models.sampling_policy().as_ref(), self.epoch)?;
        self.evals.append(self.epoch, &m)
    }

    fn evaluate_along_with(
        &self,
        model: &dyn crate::models::Denoiser,
        epoch: usize,
    ) -> Result<Json> {
        let dir = self.run_dir.join("along_training");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let _stream = self.evaluation_stream(epoch);
        let m = self.task.evaluate(
            &self.models,
            model,
            &self.script,
            &dir,
            &format!("epoch_{epoch:03}"),
            &self.log,
            true,
        )?;
        Ok(self.with_queries(m))
    }

    /// Evaluation metrics with the oracle queries used so far, in a black-box run (the
    /// "queries used" column and the oracle-reward-against-queries figure read it).
    fn with_queries(&self, mut m: Json) -> Json {
        if let Some(r) = &self.rounds {
            m["queries_used"] = json!(r.oracle.used());
        }
        m
    }

    /// Whether the run's last along-training point is the evaluation after training (the
    /// task draws the same samples for both), rather than an evaluation of its own.
    fn after_is_last_point(&self) -> bool {
        let cfg = &self.script.config;
        cfg.evals > 0 && self.task.along_equals_after(cfg)
    }

    /// The pretrained model's metrics, computed once per run folder.
    fn evaluate_before(&self) -> Result<Json> {
        let path = self.run_dir.join("eval_before.json");
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(v) = serde_json::from_str(&text) {
                return Ok(v);
            }
        }
        self.log.info("evaluating the pretrained model");
        let _stream = self.evaluation_stream(0);
        let v = self.task.evaluate(
            &self.models,
            self.models.reference.as_ref(),
            &self.script,
            &self.run_dir,
            "before",
            &self.log,
            false,
        )?;
        crate::tensor_io::write_file_atomic(&path, serde_json::to_string_pretty(&v)?)?;
        Ok(v)
    }
}

impl Trainer {
    /// What an evaluation's hooks draw from (`math.random` in a reward, say) instead of the
    /// run's stream: evaluations, which rank 0 alone makes, never move the training stream.
    fn evaluation_stream(&self, epoch: usize) -> rng::StreamSwap<'_> {
        let stream = rng::row_stream(self.script.config.seed, epoch as u64);
        rng::StreamSwap::new(&self.rng, stream)
    }

    /// A rank other than 0: the epochs only (their metrics, checkpoints and evaluations are
    /// rank 0's); the report's evaluations are empty.
    fn follow_run(&mut self, started: Instant) -> Result<EvalReport> {
        let bar = ProgressBar::hidden();
        self.train_epochs(&bar)?;
        Ok(EvalReport {
            before: Json::Null,
            after: Json::Null,
            epochs: self.epoch,
            wall_seconds: started.elapsed().as_secs_f64(),
            peak_rss_mib: None,
            script: self.script.path.display().to_string(),
            script_generation: self.generation,
            config: self.script.config.clone(),
            queries_used: self.rounds.as_ref().map(|r| r.oracle.used()),
            oracle_budget: self.rounds.as_ref().map(|r| r.oracle.budget()),
        })
    }
}

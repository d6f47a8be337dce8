//! Parity with the reference implementations the SD-1.5 path follows (diffusers 0.42,
//! transformers 5.25, peft 0.21): tiny random models built and saved by those libraries'
//! own classes (`tools/parity/make_fixtures.py`, fixtures in `tests/fixtures/parity/`) are
//! loaded through sqdf's real loaders and run on the recorded inputs; the outputs must
//! match the libraries' to 1e-4 relative (of the reference's largest value). No Python at
//! test time.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sqdf::diffusion::{DdimSampler, Spacing};
use sqdf::lora_files::{expected_adapters, load_lora, merge::merge_kohya_file, LoraFormat};
use sqdf::models::clip::{self, ClipConfig, ClipTextConfig};
use sqdf::models::vae;
use sqdf::models::{ConsistencyModel, Denoiser, UNet2DConditionModel, UNetConfig};
use sqdf::nn::{LoraBuilder, LoraConfig};
use sqdf::tasks::sd15::{layout, parts, random_weights, task, Layout};
use sqdf::text::ClipTokenizer;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const DEV: Device = Device::Cpu;
/// Relative to the reference's largest absolute value.
const RTOL: f32 = 1e-4;

pub(crate) fn fixtures() -> PathBuf {
    crate::common::repo_root().join("tests/fixtures/parity")
}

/// The SD folder (diffusers layout) the fixtures hold.
fn sd() -> Layout {
    Layout::new(fixtures().join("sd"))
}

pub(crate) fn io(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join(name), &DEV).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// |ours - reference| <= RTOL * max |reference| everywhere, same shape.
pub(crate) fn assert_close(ours: &Tensor, reference: &Tensor, what: &str) {
    assert_eq!(ours.dims(), reference.dims(), "{what}: shape");
    let (a, b) = (flat(ours), flat(reference));
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let (i, worst) = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .enumerate()
        .fold((0, 0f32), |m, (i, d)| if d > m.1 { (i, d) } else { m });
    assert!(
        worst <= RTOL * scale,
        "{what}: differs from the reference by {worst:e} at element {i} ({} vs {}), max |ref| {scale}",
        a[i],
        b[i]
    );
}

fn ids(t: &Tensor) -> Tensor {
    t.to_dtype(DType::U32).unwrap()
}

// ------------------------------------------------------------------------------------
// Tokenizer

#[derive(serde::Deserialize)]
struct TokCase {
    prompt: String,
    ids: Vec<u32>,
    padded: Vec<u32>,
}

#[derive(serde::Deserialize)]
struct TokFixture {
    max_length: usize,
    cases: Vec<TokCase>,
}

fn tokenizer() -> ClipTokenizer {
    ClipTokenizer::from_files(&sd().path(layout::VOCAB), &sd().path(layout::MERGES)).unwrap()
}

/// transformers 5's `CLIPTokenizer.from_pretrained(folder)` on hard prompts: decomposed
/// accents and Hangul jamo (NFC), a final capital sigma (lowercased to σ, not ς), special
/// tokens in other cases (text, not the token), special tokens inside words, full-width
/// forms, ligatures, emoji, no-break and zero-width spaces, empty and over-long prompts.
#[test]
fn tokenizer_ids_match_transformers() {
    let text = std::fs::read_to_string(fixtures().join("tokenizer_ids.json")).unwrap();
    let fx: TokFixture = serde_json::from_str(&text).unwrap();
    let tok = tokenizer();
    for c in &fx.cases {
        assert_eq!(tok.encode(&c.prompt), c.ids, "ids of {:?}", c.prompt);
        assert_eq!(
            tok.encode_padded(&c.prompt, fx.max_length),
            c.padded,
            "padded ids of {:?}",
            c.prompt
        );
    }
}

// ------------------------------------------------------------------------------------
// CLIP

/// SD's text encoder as transformers 5 saves a `CLIPTextModel` (keys at the root, no
/// `text_model.`), read with sqdf's config parser and loader: last hidden state and pooled
/// output on the tokenizer fixture's ids.
#[test]
fn clip_text_encoder_saved_by_transformers_5_matches() {
    let l = sd();
    let cfg = parts::text_encoder_config(&l).unwrap();
    let text = clip::load_text(&l.path(layout::TEXT_ENCODER), &cfg, &DEV, DType::F32, false)
        .expect("transformers 5's CLIPTextModel file loads");
    let r = io("clip_text_io.safetensors");
    let input = ids(&r["input_ids"]);
    assert_close(
        &text.forward(&input).unwrap(),
        &r["last_hidden_state"],
        "last_hidden_state",
    );
    assert_close(
        &text.pooled(&input).unwrap(),
        &r["pooler_output"],
        "pooler_output",
    );
}

/// The sd15 path end to end for text: prompts -> sqdf's tokenizer -> sqdf's encoder
/// (`prompt_text::text_states`), against transformers' encoder on transformers' ids.
#[test]
fn prompt_states_match_transformers_end_to_end() {
    let l = sd();
    let cfg = parts::text_encoder_config(&l).unwrap();
    let text =
        clip::load_text(&l.path(layout::TEXT_ENCODER), &cfg, &DEV, DType::F32, false).unwrap();
    let fx: TokFixture = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tokenizer_ids.json")).unwrap(),
    )
    .unwrap();
    // The rows make_fixtures.py encoded: the first four prompts and the Greek one.
    let prompts: Vec<String> = [0, 1, 2, 3, 7]
        .iter()
        .map(|&i| fx.cases[i].prompt.clone())
        .collect();
    let states =
        sqdf::tasks::sd15::prompt_text::text_states(&text, &tokenizer(), &prompts, &DEV).unwrap();
    let r = io("clip_text_io.safetensors");
    assert_close(
        &states,
        &r["last_hidden_state"],
        "text states of the prompts",
    );
}

/// A whole `CLIPModel` as transformers 5 saves it (config.json with text_config /
/// vision_config, `text_model.*`, `vision_model.*`, both projections, `logit_scale`):
/// image embeddings (vision tower + visual_projection) and text embeddings.
#[test]
fn clip_model_image_and_text_embeds_match() {
    let dir = fixtures().join("clip");
    let cfg =
        ClipConfig::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let weights = dir.join("model.safetensors");
    let r = io("clip_io.safetensors");
    let vision = clip::load_vision(&weights, &cfg.vision_config, &DEV, DType::F32).unwrap();
    assert_close(
        &vision.forward(&r["pixel_values"]).unwrap(),
        &r["image_embeds"],
        "image_embeds",
    );
    let text = clip::load_text(&weights, &cfg.text_config, &DEV, DType::F32, true).unwrap();
    assert_close(
        &text.text_embeds(&ids(&r["input_ids"])).unwrap(),
        &r["text_embeds"],
        "text_embeds",
    );
}

// ------------------------------------------------------------------------------------
// UNet and LoRA

fn unet_base() -> (UNetConfig, HashMap<String, Tensor>) {
    let l = sd();
    let cfg = task::unet_config(&l).unwrap();
    let tensors = task::load_unet_tensors(&l, &cfg, &DEV, DType::F32).unwrap();
    (cfg, tensors)
}

fn eps_of(unet: &UNet2DConditionModel, r: &HashMap<String, Tensor>) -> Tensor {
    unet.forward(&r["sample"], &r["timestep"], &r["encoder_hidden_states"])
        .unwrap()
}

/// diffusers' `UNet2DConditionModel` (saved by `save_pretrained`, read through the sd15
/// task's config and weight loaders): ε at timesteps 999, 500 and 1.
#[test]
fn unet_eps_matches_diffusers() {
    let (cfg, tensors) = unet_base();
    let unet = UNet2DConditionModel::new(
        VarBuilder::from_tensors(tensors, DType::F32, &DEV),
        &cfg,
        None,
    )
    .unwrap();
    let r = io("unet_io.safetensors");
    assert_close(&eps_of(&unet, &r), &r["eps"], "eps");
}

/// The adapter peft trained: rank 2, alpha 4, on attention and resnet convolutions.
const LORA: LoraConfig = LoraConfig {
    rank: 2,
    alpha: 4.0,
    convs: true,
};

/// ε of the UNet with a diffusers/PEFT LoRA file read by `load_lora` into adapters.
fn eps_with_lora_file(file: &str, format: LoraFormat) -> Tensor {
    let (cfg, tensors) = unet_base();
    let varmap = VarMap::new();
    let lora = LoraBuilder::new(LORA, VarBuilder::from_varmap(&varmap, DType::F32, &DEV));
    let unet = UNet2DConditionModel::new(
        VarBuilder::from_tensors(tensors, DType::F32, &DEV),
        &cfg,
        Some(&lora),
    )
    .unwrap();
    let path = fixtures().join("lora").join(file);
    let loaded = load_lora(&path, &expected_adapters(&varmap), &DEV).unwrap();
    assert_eq!(loaded.format, format);
    assert_eq!(
        (loaded.rank, loaded.alpha),
        (2, 4.0),
        "{file}: rank and alpha"
    );
    let loaded = loaded.rescale_to(LORA.alpha).unwrap();
    sqdf::tensor_io::set_vars(&varmap, &loaded.tensors, &path).unwrap();
    eps_of(&unet, &io("unet_io.safetensors"))
}

/// peft's LoRA saved by diffusers' `save_lora_weights` with PEFT names
/// (`unet.*.lora_A.weight`) and the adapter config in `lora_adapter_metadata`.
#[test]
fn unet_with_a_peft_lora_file_matches_peft() {
    let eps = eps_with_lora_file("peft.safetensors", LoraFormat::Peft);
    assert_close(
        &eps,
        &io("unet_io.safetensors")["eps_lora"],
        "eps with LoRA",
    );
}

/// The same adapter as diffusers' training scripts save it (`convert_state_dict_to_diffusers`:
/// `unet.*.lora.down.weight` / `.lora.up.weight`).
#[test]
fn unet_with_a_diffusers_named_lora_file_matches_peft() {
    let eps = eps_with_lora_file("diffusers.safetensors", LoraFormat::Peft);
    assert_close(
        &eps,
        &io("unet_io.safetensors")["eps_lora"],
        "eps with LoRA",
    );
}

/// The same adapter in kohya's format (diffusers' `convert_state_dict_to_kohya`), merged
/// into the base weights as the LCM-LoRA is.
#[test]
fn unet_with_a_merged_kohya_lora_matches_peft() {
    let (cfg, tensors) = unet_base();
    let merged = merge_kohya_file(&fixtures().join("lora/kohya.safetensors"), tensors).unwrap();
    assert!(merged.skipped.is_empty());
    let unet = UNet2DConditionModel::new(
        VarBuilder::from_tensors(merged.tensors, DType::F32, &DEV),
        &cfg,
        None,
    )
    .unwrap();
    let r = io("unet_io.safetensors");
    assert_close(
        &eps_of(&unet, &r),
        &r["eps_lora"],
        "eps with merged kohya LoRA",
    );
}

// ------------------------------------------------------------------------------------
// VAE

/// diffusers' `AutoencoderKL.decode(latents / scaling_factor)` against sqdf's decoder,
/// read through the sd15 task's config and loader from the file with the encoder in it.
#[test]
fn vae_decode_matches_diffusers() {
    let l = sd();
    let cfg = vae::config_from_dir(&l.dir).unwrap();
    let dec = vae::load(&l.path(layout::VAE), &cfg, &DEV, DType::F32).unwrap();
    let r = io("vae_io.safetensors");
    assert_close(
        &dec.decode(&r["latents"]).unwrap(),
        &r["image"],
        "decoded image",
    );
}

// ------------------------------------------------------------------------------------
// Schedulers

fn timesteps(t: &Tensor) -> Vec<usize> {
    flat(t).iter().map(|&v| v as usize).collect()
}

/// diffusers' `DDIMScheduler` with SD-1.5's config (leading spacing, offset 1,
/// `set_alpha_to_one = false`) and with trailing spacing (`set_alpha_to_one = true`), 50
/// steps: the grid, and steps at the first, second, middle and last two indices with
/// η = 0 and η = 1 on recorded noise (prev_sample and pred_original_sample).
#[test]
fn ddim_steps_match_diffusers() {
    let r = io("ddim_io.safetensors");
    let schedule = task::schedule();
    for name in ["leading50", "trailing50"] {
        let get = |k: &str| r[&format!("{name}.{k}")].clone();
        let idx = timesteps(&get("index"));
        for eta in [0.0, 1.0] {
            let s = match name {
                "leading50" => task::sampler(&schedule, 50, eta),
                _ => DdimSampler::new(&schedule, 50, eta, Spacing::Trailing, 1.0),
            };
            assert_eq!(s.timesteps(), timesteps(&get("timesteps")), "{name} grid");
            let step = s.step(&get("sample"), &get("eps"), &idx).unwrap();
            let prev = step
                .mean
                .add(&step.sigma.broadcast_mul(&get("noise")).unwrap())
                .unwrap();
            let e = eta as u32;
            assert_close(
                &prev,
                &get(&format!("eta{e}.prev_sample")),
                &format!("{name} η={e} prev_sample"),
            );
            assert_close(
                &step.x0,
                &get(&format!("eta{e}.x0")),
                &format!("{name} η={e} x0"),
            );
        }
    }
}

/// Trailing spacing with 3 steps (3 does not divide 1000): the grid is diffusers'
/// (999, 666, 332), and the first and last steps agree; the middle one differs as
/// documented at `Spacing::Trailing`: diffusers steps 666 -> 333, sqdf to the next grid
/// point 332. Checked by value: sqdf's middle step is diffusers' formula with ᾱ(332).
#[test]
fn ddim_trailing_3_steps_differs_from_diffusers_only_where_documented() {
    let r = io("ddim_io.safetensors");
    let get = |k: &str| r[&format!("trailing3.{k}")].clone();
    let schedule = task::schedule();
    let s = DdimSampler::new(&schedule, 3, 0.0, Spacing::Trailing, 1.0);
    assert_eq!(s.timesteps(), timesteps(&get("timesteps")));
    assert_eq!(s.timesteps(), &[999, 666, 332]);
    let step = s.step(&get("sample"), &get("eps"), &[0, 1, 2]).unwrap();
    let theirs = get("eta0.prev_sample");
    for i in [0, 2] {
        assert_close(
            &step.mean.get(i).unwrap(),
            &theirs.get(i).unwrap(),
            &format!("trailing3 step {i}"),
        );
    }
    // Step 1 with η = 0: sqrt(ᾱ_prev) x0 + sqrt(1 - ᾱ_prev) ε; diffusers takes ᾱ(333).
    let (x0, eps) = (step.x0.get(1).unwrap(), get("eps").get(1).unwrap());
    let at = |t: usize| {
        let a = schedule.alpha_bar(t);
        ((&x0 * a.sqrt()).unwrap() + (&eps * (1.0 - a).sqrt()).unwrap()).unwrap()
    };
    assert_close(
        &at(333),
        &theirs.get(1).unwrap(),
        "diffusers' step 666 -> 333",
    );
    assert_close(
        &step.mean.get(1).unwrap(),
        &at(332),
        "sqdf's step 666 -> 332",
    );
    let gap = flat(&(step.mean.get(1).unwrap() - theirs.get(1).unwrap()).unwrap())
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()));
    assert!(gap > 1e-4, "the steps to 332 and 333 differ ({gap})");
}

/// A denoiser that answers a recorded ε.
struct Fixed(Tensor);

impl Denoiser for Fixed {
    fn eps(&self, _: &Tensor, _: &Tensor, _: &Tensor) -> candle_core::Result<Tensor> {
        Ok(self.0.clone())
    }
}

/// diffusers' `LCMScheduler` (SD-1.5's betas, timestep_scaling 10, 50 original steps):
/// its `denoised` (the consistency function's output) at the timesteps of a 4-step run,
/// against sqdf's consistency model on the LCM grid.
#[test]
fn lcm_consistency_output_matches_diffusers() {
    let r = io("lcm_io.safetensors");
    let t = timesteps(&r["timesteps"]);
    let model = ConsistencyModel {
        net: Arc::new(Fixed(r["eps"].clone())),
        scalings: Default::default(),
        schedule: task::schedule(),
        grid: sqdf::tasks::sd15::lcm::lcm_grid(),
    };
    let cond = Tensor::zeros(t.len(), DType::U32, &DEV).unwrap();
    let x0 = model.x0(&r["sample"], &t, &cond).unwrap();
    assert_close(&x0, &r["denoised"], "LCM denoised");
}

// ------------------------------------------------------------------------------------
// Folders sqdf writes, in the reference libraries' format

/// The sizes of the fixture models, read back from the configs diffusers and
/// transformers wrote.
fn fixture_sizes() -> random_weights::Sizes {
    let l = sd();
    let mut s = random_weights::Sizes::tiny();
    s.unet = task::unet_config(&l).unwrap();
    s.vae = vae::config_from_dir(&l.dir).unwrap();
    s.text = parts::text_encoder_config(&l).unwrap();
    s.clip = ClipConfig::from_json(
        &std::fs::read_to_string(fixtures().join("clip/config.json")).unwrap(),
    )
    .unwrap();
    s
}

fn json(path: &Path) -> serde_json::Map<String, serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Keys and shapes of a safetensors file.
fn shapes(path: &Path) -> HashMap<String, Vec<usize>> {
    candle_core::safetensors::load(path, &DEV)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.dims().to_vec()))
        .collect()
}

/// Every key of `reference` (a config diffusers/transformers wrote) that describes the
/// architecture is in `ours` with the same value.
fn assert_config_covers(ours: &Path, reference: &Path, skip: &[&str]) {
    let (a, b) = (json(ours), json(reference));
    for (k, v) in &b {
        if skip.contains(&k.as_str()) {
            continue;
        }
        assert_eq!(
            a.get(k),
            Some(v),
            "{}: `{k}` is {:?}, {} (written by the reference library) has {v}",
            ours.display(),
            a.get(k),
            reference.display()
        );
    }
}

/// `sqdf random-weights` writes configs the reference libraries would write for the same
/// model (every architectural key diffusers' / transformers' `save_pretrained` writes, same
/// value) and weight files with the keys and shapes theirs have, so that
/// `UNet2DConditionModel.from_pretrained`, `AutoencoderKL.from_pretrained` and
/// `CLIPTextModel.from_pretrained` read them as they are.
#[test]
fn random_weight_folders_are_in_the_reference_format() {
    let dir = tempfile::tempdir().unwrap();
    let ours = random_weights::write(dir.path(), &fixture_sizes(), 3, DType::F32).unwrap();
    // ... and stays a folder sqdf's own loaders read (configs with the added keys, the
    // VAE file with its encoder, the CLIP file with logit_scale).
    let tok = ClipTokenizer::from_dir(&ours.dir.join("tokenizer")).unwrap();
    parts::Sd15Parts::load(&ours, vec!["a cat".into()], 1, &tok, &DEV, DType::F32).unwrap();
    let unet_cfg = task::unet_config(&ours).unwrap();
    task::load_unet_tensors(&ours, &unet_cfg, &DEV, DType::F32).unwrap();
    let text_cfg = parts::text_encoder_config(&ours).unwrap();
    clip::load_text(
        &ours.path(layout::TEXT_ENCODER),
        &text_cfg,
        &DEV,
        DType::F32,
        false,
    )
    .unwrap();
    let theirs = sd();
    // Versions and dtype are the writer's; `_name_or_path` is where it was loaded from.
    // The special tokens' ids are those of the tokenizer each folder has (checked below).
    let skip = [
        "_diffusers_version",
        "transformers_version",
        "_name_or_path",
        "dtype",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    ];
    let text_cfg = json(&ours.dir.join("text_encoder/config.json"));
    let id = |k: &str| text_cfg[k].as_u64().unwrap() as u32;
    assert_eq!(
        (id("bos_token_id"), id("eos_token_id"), id("pad_token_id")),
        (tok.bos_id(), tok.eos_id(), tok.pad_id())
    );
    for rel in [layout::UNET, layout::VAE, layout::TEXT_ENCODER] {
        let cfg = |l: &Layout| l.path(rel).parent().unwrap().join("config.json");
        assert_config_covers(&cfg(&ours), &cfg(&theirs), &skip);
        // transformers 5 writes CLIPTextModel's keys at the root; SD-1.5's file (which
        // sqdf writes) has them under text_model., which transformers reads too.
        let strip = |m: HashMap<String, Vec<usize>>| -> HashMap<String, Vec<usize>> {
            m.into_iter()
                .map(|(k, v)| (k.strip_prefix("text_model.").unwrap_or(&k).to_string(), v))
                .collect()
        };
        let (a, b) = (
            strip(shapes(&ours.path(rel))),
            strip(shapes(&theirs.path(rel))),
        );
        let mut missing: Vec<_> = b.keys().filter(|k| a.get(*k) != b.get(*k)).collect();
        missing.sort();
        assert!(
            missing.is_empty(),
            "{rel}: keys missing or of another shape: {missing:?}"
        );
        let mut extra: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).collect();
        extra.sort();
        assert!(
            extra.is_empty(),
            "{rel}: keys the reference does not have: {extra:?}"
        );
    }
    let clip_cfg = |l: &Path| l.join("clip-vit-large-patch14/config.json");
    let reference = json(&fixtures().join("clip/config.json"));
    let written = json(&clip_cfg(&ours.dir));
    for k in ["architectures", "model_type", "projection_dim"] {
        assert_eq!(written.get(k), reference.get(k), "clip config `{k}`");
    }
    let a = shapes(&ours.path(layout::CLIP));
    let b = shapes(&fixtures().join("clip/model.safetensors"));
    let mut differ: Vec<_> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .collect();
    differ.sort();
    assert!(
        differ.is_empty(),
        "CLIP keys missing, extra or of another shape: {differ:?}"
    );
}

/// transformers 5's `CLIPTextModel` writes no `text_model.` prefix (the first
/// bug); a config parsed by sqdf from its config.json has its sizes.
#[test]
fn transformers_5_text_encoder_has_root_keys_and_its_config_parses() {
    let keys = shapes(&sd().path(layout::TEXT_ENCODER));
    assert!(keys.contains_key("embeddings.token_embedding.weight"));
    assert!(!keys.keys().any(|k| k.starts_with("text_model.")));
    let cfg: ClipTextConfig = parts::text_encoder_config(&sd()).unwrap();
    assert_eq!((cfg.hidden_size, cfg.num_hidden_layers), (32, 2));
}

// ------------------------------------------------------------------------------------
// The digits UNet and `sqdf export`

fn digits_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits/unet.safetensors")
}

/// The shipped digits UNet (class embedding, cross-attention at the coarsest level, three
/// levels) through sqdf's loader, against diffusers' `UNet2DConditionModel` with the same
/// file loaded strictly: ε for prompts 3, 7 and the null prompt at t = 999, 479, 19.
/// (Made from models/digits/unet.safetensors: retraining that model means regenerating.)
#[test]
fn digits_unet_matches_diffusers() {
    let (net, _, _) = sqdf::tasks::digits::process::load_unet(&digits_model(), &DEV, "-").unwrap();
    let r = io("digits_io.safetensors");
    let eps = net
        .eps(&r["sample"], &r["timestep"], &ids(&r["prompt"]))
        .unwrap();
    assert_close(&eps, &r["eps"], "digits eps");
}

/// `sqdf export` writes configs with every key diffusers writes for this UNet and its
/// scheduler, and the exported network, read back from the folder, gives diffusers' ε
/// with `encoder_hidden_states = prompt_embeds[c]`, `class_labels = c`.
#[test]
fn exported_digits_folder_is_diffusers_and_gives_its_eps() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("digits");
    sqdf::cli::export::export_digits(&digits_model(), &out).unwrap();
    let skip = ["_diffusers_version"];
    assert_config_covers(
        &out.join("unet/config.json"),
        &fixtures().join("digits/unet/config.json"),
        &skip,
    );
    assert_config_covers(
        &out.join("scheduler/scheduler_config.json"),
        &fixtures().join("digits/scheduler/scheduler_config.json"),
        &skip,
    );
    let cfg: UNetConfig =
        serde_json::from_str(&std::fs::read_to_string(out.join("unet/config.json")).unwrap())
            .unwrap();
    let weights =
        candle_core::safetensors::load(out.join("unet/diffusion_pytorch_model.safetensors"), &DEV)
            .unwrap();
    let unet = UNet2DConditionModel::new(
        VarBuilder::from_tensors(weights, DType::F32, &DEV),
        &cfg,
        None,
    )
    .unwrap();
    let prompts = candle_core::safetensors::load(out.join("prompt_embeds.safetensors"), &DEV)
        .unwrap()
        .remove("prompt_embeds")
        .unwrap();
    let r = io("digits_io.safetensors");
    let c = ids(&r["prompt"]);
    let eps = unet
        .forward_with_class(
            &r["sample"],
            &r["timestep"],
            &prompts.index_select(&c, 0).unwrap(),
            Some(&c),
        )
        .unwrap();
    assert_close(&eps, &r["eps"], "exported digits eps");
}

// ------------------------------------------------------------------------------------
// The LAION aesthetic head and CLIP's preprocessing

/// The aesthetic head as the LAION predictor's `.pth` is (torch.save of an `nn.Sequential`
/// state dict, `layers.{0,2,4,6,7}`, hidden widths 1024, 128, 64, 16, 1, dropouts between,
/// no activations; input width 16 here, f16 weights), read by sqdf's loader: scores of
/// random embeddings L2-normalised by sqdf against torch's head on LAION's `normalized`.
/// Then the reward end to end (`AestheticReward::score`: [-1, 1] images at the fixture
/// CLIP's 28 x 28, so the resize is the identity -> CLIP normalisation -> vision tower and
/// projection -> normalised -> head) against transformers' `CLIPModel` and torch's head.
#[test]
fn aesthetic_head_pth_matches_torch() {
    use sqdf::rewards::aesthetic::{AestheticHead, AestheticReward};
    let r = io("aesthetic_io.safetensors");
    let in_dim = r["embeds"].dim(1).unwrap();
    let head = AestheticHead::load(
        &fixtures().join("aesthetic/head.pth"),
        in_dim,
        &DEV,
        DType::F32,
    )
    .expect("torch.save's .pth of the head loads");
    let normalized = clip::l2_normalize(&r["embeds"]).unwrap();
    assert_close(
        &head.forward(&normalized).unwrap(),
        &r["scores"],
        "aesthetic scores",
    );

    let dir = fixtures().join("clip");
    let cfg =
        ClipConfig::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let vision = clip::load_vision(
        &dir.join("model.safetensors"),
        &cfg.vision_config,
        &DEV,
        DType::F32,
    )
    .unwrap();
    let reward = AestheticReward::new(vision, head).unwrap();
    assert_close(
        &reward.score(&r["images"]).unwrap(),
        &r["image_scores"],
        "aesthetic reward of images",
    );
}

/// sqdf's differentiable CLIP preprocessing ([-1, 1] -> [0, 1] clamped, shortest side to
/// S with an antialiased triangle filter, CLIPImageProcessor's long side and centre crop,
/// CLIP's mean and std) against the torch formula its doc states (`interpolate(mode =
/// "bilinear", antialias = True)`, PIL's triangle filter), not against
/// CLIPImageProcessor's 8-bit bicubic, a documented difference. Upscaling 48 x 48 and
/// 60 x 50 to 224 (a grid of rows and columns compared) and downscaling 50 x 40 and
/// 33 x 43 to 24 (every pixel; non-integer factors, crops along rows and along columns).
#[test]
fn clip_preprocess_matches_torch_antialiased_bilinear() {
    use sqdf::rewards::clip_preprocess::clip_preprocess;
    let r = io("clip_preprocess_io.safetensors");
    for name in ["up48x48", "up60x50", "down50x40", "down33x43"] {
        let get = |k: &str| r[&format!("{name}.{k}")].clone();
        let size = flat(&get("size"))[0] as usize;
        let mut ours = clip_preprocess(&get("image"), size).unwrap();
        assert_eq!(ours.dims(), &[1, 3, size, size], "{name}: shape");
        if let Some(grid) = r.get(&format!("{name}.grid")) {
            let g = ids(grid);
            ours = ours
                .index_select(&g, 2)
                .unwrap()
                .index_select(&g, 3)
                .unwrap();
        }
        assert_close(&ours, &get("pixels"), &format!("{name}: CLIP pixels"));
    }
}

// ------------------------------------------------------------------------------------
// The LoRA files sqdf writes, as diffusers reads them

/// Keys, shapes, dtypes and values of two safetensors files agree (values to RTOL), and
/// so does their metadata.
fn assert_same_file(ours: &Path, reference: &Path) {
    let (a, b) = (
        sqdf::tensor_io::read(ours, &DEV).unwrap(),
        sqdf::tensor_io::read(reference, &DEV).unwrap(),
    );
    let what = reference.file_name().unwrap().to_string_lossy().to_string();
    assert_eq!(a.metadata, b.metadata, "{what}: metadata");
    let mut ka: Vec<_> = a.tensors.keys().collect();
    let mut kb: Vec<_> = b.tensors.keys().collect();
    ka.sort();
    kb.sort();
    assert_eq!(ka, kb, "{what}: keys");
    for (k, t) in &b.tensors {
        assert_eq!(a.tensors[k].dtype(), t.dtype(), "{what}: dtype of {k}");
        assert_close(&a.tensors[k], t, &format!("{what}: {k}"));
    }
}

/// sqdf's `save_peft` and `save_kohya` (what a run writes beside its checkpoint,
/// train::lora_export) on known adapters (rank 2, trained alpha 4) write the files that
/// make_fixtures.py loaded into diffusers' UNet with `lora_state_dict` +
/// `load_lora_into_unet` (what `pipe.load_lora_weights` runs) without a missing or
/// unexpected key, and that gave the trained model's ε there: same keys, shapes, values
/// (B scaled by alpha/rank in the PEFT file, alpha in kohya's) and metadata. And sqdf,
/// reading back its own files, gives diffusers' ε.
#[test]
fn lora_files_sqdf_writes_are_what_diffusers_loaded() {
    use sqdf::lora_files::{save_kohya, save_peft};
    let r = io("lora_export_io.safetensors");
    let adapters: HashMap<String, Tensor> = r
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("adapter.")?.to_string(), v.clone())))
        .collect();
    let (cfg, tensors) = unet_base();
    let trained = VarMap::new();
    let lora = LoraBuilder::new(LORA, VarBuilder::from_varmap(&trained, DType::F32, &DEV));
    let _unet = UNet2DConditionModel::new(
        VarBuilder::from_tensors(tensors, DType::F32, &DEV),
        &cfg,
        Some(&lora),
    )
    .unwrap();
    // The fixture's adapters are exactly the model's (names and shapes).
    sqdf::tensor_io::set_vars(&trained, &adapters, Path::new("lora_export_io")).unwrap();
    assert_eq!(expected_adapters(&trained).len(), adapters.len());

    let dir = tempfile::tempdir().unwrap();
    let unet_io = io("unet_io.safetensors");
    for (file, format, eps) in [
        ("sqdf_peft.safetensors", LoraFormat::Peft, "eps_peft"),
        ("sqdf_kohya.safetensors", LoraFormat::Kohya, "eps_kohya"),
    ] {
        let ours = dir.path().join(file);
        match format {
            LoraFormat::Peft => save_peft(&ours, &trained, &LORA).unwrap(),
            LoraFormat::Kohya => save_kohya(&ours, &trained, &LORA).unwrap(),
        }
        assert_same_file(&ours, &fixtures().join("lora").join(file));

        let (cfg, tensors) = unet_base();
        let varmap = VarMap::new();
        let lora = LoraBuilder::new(LORA, VarBuilder::from_varmap(&varmap, DType::F32, &DEV));
        let unet = UNet2DConditionModel::new(
            VarBuilder::from_tensors(tensors, DType::F32, &DEV),
            &cfg,
            Some(&lora),
        )
        .unwrap();
        let loaded = load_lora(&ours, &expected_adapters(&varmap), &DEV).unwrap();
        assert_eq!(loaded.format, format, "{file}");
        let loaded = loaded.rescale_to(LORA.alpha).unwrap();
        sqdf::tensor_io::set_vars(&varmap, &loaded.tensors, &ours).unwrap();
        assert_close(
            &eps_of(&unet, &unet_io),
            &r[eps],
            &format!("eps with {file} (diffusers loaded it)"),
        );
    }
    // Both files mean the trained model, as diffusers found.
    assert_close(&r["eps_peft"], &r["eps_trained"], "diffusers: PEFT file");
    assert_close(&r["eps_kohya"], &r["eps_trained"], "diffusers: kohya file");
}

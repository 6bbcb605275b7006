//! The committed stage-0 story-world models (`models/storyworld/{vae,clip,lm}`, exported by
//! `scripts/train-storyworld.sh`) load through the normal Hugging Face loaders and keep their
//! measured quality on a freshly generated world they never saw (another seed). The bounds sit
//! a little under the numbers of their model cards (docs/training.md#results-on-the-story-world).

use std::path::PathBuf;

use burn::module::Param;
use burn::tensor::Tensor;
use storygpt::backend::default_device;
use storygpt::core::Autoencoder;
use storygpt::data::world::{self, WorldConfig};
use storygpt::data::{Split, StoryDataset, open_dataset};
use storygpt::models::autoencoder_kl::AutoencoderKL;
use storygpt::models::clip::{
    ClipTextModelWithProjection, ClipTokenizer, ClipVisionModelWithProjection,
};
use storygpt::models::llama::LlamaForCausalLM;
use storygpt::models::llm_tokenizer::LlmTokenizer;
use storygpt::train::clip::{ClipData, ClipPair, retrieval_metrics};

use crate::common::TB;

fn model(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models/storyworld")
        .join(name)
}

/// 40 stories (160 frames) at 64², seed 11: the models were trained on seed 0. The folder
/// lives as long as the returned `TempDir`.
fn unseen_world() -> (tempfile::TempDir, Box<dyn StoryDataset>) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = WorldConfig {
        stories: 40,
        seed: 11,
        size: 64,
        ..WorldConfig::default()
    };
    let dir = tmp.path().join("world");
    world::generate(&cfg, &dir, false, &|_, _| {}).unwrap();
    let ds = open_dataset(&dir).unwrap();
    (tmp, ds)
}

#[test]
fn committed_vae_reconstructs_unseen_frames() {
    let dev = default_device();
    let (_tmp, ds) = unseen_world();
    let vae = AutoencoderKL::<TB>::from_pretrained(model("vae"), &dev).unwrap();
    let images: Vec<_> = ds.frame_ids(Split::Train)[..24]
        .iter()
        .map(|id| ds.load_image(id, 0).unwrap().image)
        .collect();
    let x = storygpt::train::data::images_to_tensor::<TB>(images.iter(), 64, &dev);
    let recon = vae.decode(vae.encode(x.clone()).mode()).clamp(-1.0, 1.0);
    let psnr = storygpt::train::vae::psnr(recon, x);
    // model card: 22.45 dB on the training world's validation frames
    assert!(psnr >= 20.5, "PSNR {psnr:.2} dB on unseen frames");
}

#[test]
fn committed_clip_names_every_portrait_and_crop() {
    let dev = default_device();
    let (_tmp, ds) = unseen_world();
    let clip = ClipPair::<TB> {
        text: ClipTextModelWithProjection::from_pretrained(model("clip"), &dev).unwrap(),
        vision: ClipVisionModelWithProjection::from_pretrained(model("clip"), &dev).unwrap(),
        logit_scale: Param::from_tensor(Tensor::from_floats([2.659_2f32], &dev)),
    };
    let tok = ClipTokenizer::from_dir(model("clip")).unwrap();
    let data = ClipData::load(ds.as_ref(), Split::Train, 64, Some(96)).unwrap();
    let m = retrieval_metrics(&clip, &data, &tok, 64, &dev).unwrap();
    // model card: 1.0 / 1.0 / 0.42 (among 400 frames; many captions fit several frames)
    assert_eq!(m["portrait_to_name"], 1.0, "{m:?}");
    assert!(m["crop_to_name"] >= 0.97, "{m:?}");
    assert!(m["text_to_image_top1"] >= 0.25, "{m:?}");
}

#[test]
fn committed_lm_resolves_pronouns_in_unseen_stories() {
    let dev = default_device();
    let (_tmp, ds) = unseen_world();
    let lm = LlamaForCausalLM::<TB>::from_pretrained(model("lm"), &dev).unwrap();
    let tok = LlmTokenizer::from_dir(model("lm")).unwrap();
    let stories = storygpt::train::lm::story_texts(ds.as_ref(), Split::Train).unwrap();
    let m = storygpt::train::lm::lm_metrics(&lm, &stories, &tok, &dev).unwrap();
    // model card: perplexity 3.39, probe 0.99 over 397 probes
    assert!(m["pronoun_probes"] >= 20.0, "{m:?}");
    assert!(m["pronoun_probe_accuracy"] >= 0.95, "{m:?}");
    assert!(m["perplexity"] <= 4.5, "{m:?}");
}

/// The embedded StoryGPT-V folder carries the story world's cast, and `--first-frame char-ldm`
/// draws frame 1 from the sentence with its names fused with their portraits: exactly Char-LDM
/// sampling the marked prompt, and not what the same sentence draws as text only.
#[test]
fn embedded_first_frame_by_char_ldm_fuses_the_cast_names() {
    use storygpt::core::pipeline::Conditioning;
    use storygpt::pipeline::{FirstFrame, StoryPipeline};
    use storygpt::train::char_ldm::{prompt_conditioning, sample_with};

    let dev = default_device();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/storyworld");
    let (mut pipe, mut opts) = StoryPipeline::<TB>::from_dir(&dir, &dev).unwrap();
    let cast = pipe.cast.clone().expect("the embedded model has a cast");
    let names: Vec<&str> = cast.characters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "Fred", "Wilma", "Barney", "Betty", "Pebbles", "Slate", "Dino"
        ]
    );
    opts.first_frame = FirstFrame::CharLdm;
    opts.sample.steps = 2;
    let story = vec!["Fred waves at Wilma in the kitchen.".to_string()];
    let with_cast = pipe.visualize(&story, &opts, &mut |_, _| {}).unwrap();

    let prompt = cast.mark(&story[0]);
    assert_eq!(prompt.portraits.len(), 2);
    let ldm = &pipe.ldm;
    let (null, text, fused) = prompt_conditioning(
        &ldm.model,
        &ldm.frozen,
        std::slice::from_ref(&prompt),
        ldm.crop_size,
        &dev,
    )
    .unwrap();
    let side = ldm.resolution as usize / ldm.frozen.vae.downsample_factor();
    let channels = ldm.frozen.vae.latent_channels();
    let direct = sample_with(
        &ldm.model,
        &ldm.frozen,
        &Conditioning::delayed(null, text, fused, opts.sample.start_merge_step),
        &opts.sample,
        [1, channels, side, side],
        opts.seed,
        &dev,
    )
    .unwrap();
    assert!(
        with_cast[0].image == direct[0],
        "frame 1 is not Char-LDM on the fused names"
    );

    pipe.cast = None;
    let without = pipe.visualize(&story, &opts, &mut |_, _| {}).unwrap();
    assert!(
        with_cast[0].image != without[0].image,
        "the cast changed nothing"
    );
}

//! Embeddings equal sentence-transformers': token ids, vectors and STS-B Spearman.
//!
//! Reference data lives in ../shared (see crate::common::shared_dir), which a user's clone does not
//! have: these tests are `#[ignore]`d with that reason, so `cargo test` lists them as ignored,
//! and scripts/test.sh runs them (`--include-ignored`) when ../shared is there.

use std::path::Path;

use embedflow::embed::Precision;
use embedflow::embed::{EmbedSpec, Embedder, eval};

fn fp32_embedder(shared: &Path) -> Embedder {
    let dir = shared.join("models/all-MiniLM-L6-v2");
    Embedder::load(&EmbedSpec::new(dir.to_str().unwrap())).expect("load fp32 model")
}

fn int8_embedder(shared: &Path) -> Embedder {
    let dir = shared.join("models/all-MiniLM-L6-v2");
    let mut opts = EmbedSpec::new(dir.to_str().unwrap());
    opts.precision = Precision::Int8;
    Embedder::load(&opts).expect("quantise and load the int8 model (needs scripts/setup.sh)")
}

fn min_with_index(cosines: &[f64]) -> (usize, f64) {
    cosines.iter().enumerate().fold(
        (0, f64::MAX),
        |acc, (i, &c)| if c < acc.1 { (i, c) } else { acc },
    )
}

fn default_embedder() -> Embedder {
    Embedder::load(&EmbedSpec::new("all-MiniLM-L6-v2"))
        .expect("the offline default model (run scripts/setup.sh)")
}

fn golden_inputs(shared: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(shared.join("golden/inputs.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["text"].as_str().unwrap().to_string()
        })
        .collect()
}

fn golden_vectors(shared: &Path) -> Vec<Vec<f32>> {
    let bytes = std::fs::read(shared.join("golden/embeddings.npy")).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().to_vec();
    let data: Vec<f32> = npy.into_vec().unwrap();
    assert_eq!(shape.len(), 2);
    data.chunks(shape[1] as usize).map(|c| c.to_vec()).collect()
}

/// Cosines of our vectors against the reference, one per golden input.
fn golden_cosines(embedder: &Embedder, shared: &Path) -> Vec<f64> {
    let inputs = golden_inputs(shared);
    let refs = golden_vectors(shared);
    assert_eq!(inputs.len(), 256);
    let rows: Vec<Option<&str>> = inputs.iter().map(|s| Some(s.as_str())).collect();
    let ours = embedder.embed(&rows).unwrap();
    let dim = embedder.dim();
    assert_eq!(dim, refs[0].len());
    refs.iter()
        .enumerate()
        .map(|(i, r)| crate::common::cosine(&ours[i * dim..(i + 1) * dim], r))
        .collect()
}

fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
#[ignore = "needs ../shared (golden vectors, fp32 model, STS-B); scripts/test.sh runs it when ../shared is there"]
fn token_ids_equal_sentence_transformers() {
    let shared = crate::common::shared_dir();
    let embedder = fp32_embedder(&shared);
    let inputs = golden_inputs(&shared);
    let golden = std::fs::read_to_string(shared.join("golden/ids.jsonl")).unwrap();
    let mut checked = 0;
    for (line, text) in golden.lines().zip(&inputs) {
        let g: serde_json::Value = serde_json::from_str(line).unwrap();
        let want = u32s(&g["input_ids"]);
        let mask = u32s(&g["attention_mask"]);
        let got = embedder.tokens(text).unwrap();
        assert_eq!(got.ids, want, "input {}: {text:?}", g["i"]);
        assert_eq!(got.attention_mask, mask, "mask of input {}", g["i"]);
        checked += 1;
    }
    assert_eq!(checked, 256);
}

#[test]
#[ignore = "needs ../shared (golden vectors, fp32 model, STS-B); scripts/test.sh runs it when ../shared is there"]
fn fp32_vectors_match_sentence_transformers() {
    let shared = crate::common::shared_dir();
    let cosines = golden_cosines(&fp32_embedder(&shared), &shared);
    let (worst, min) = min_with_index(&cosines);
    eprintln!("fp32 model: minimum cosine {min:.7} (input {worst})");
    assert!(min >= 0.99999, "input {worst}: cosine {min}");
}

#[test]
#[ignore = "needs ../shared (golden vectors, fp32 model, STS-B); scripts/test.sh runs it when ../shared is there"]
fn offline_default_model_equals_sentence_transformers() {
    let shared = crate::common::shared_dir();
    let cosines = golden_cosines(&default_embedder(), &shared);
    let (worst, min) = min_with_index(&cosines);
    eprintln!(
        "offline default (fp32 from model.safetensors): minimum cosine {min:.7} (input {worst})"
    );
    assert!(min >= 0.99999, "input {worst}: cosine {min}");
}

/// Spearman correlation of cosine similarity with the gold scores on STS-B dev.
fn stsb_spearman(embedder: &Embedder, shared: &Path) -> f64 {
    let pairs = eval::read_sts(&shared.join("data/stsb_dev.tsv")).unwrap();
    assert_eq!(pairs.len(), 1500);
    eval::sts_spearman(embedder, &pairs).unwrap()
}

/// The fp32 model's STS-B Spearman, computed once for the tests that need it (3,000 sentences).
fn fp32_stsb_spearman(shared: &Path) -> f64 {
    static RHO: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *RHO.get_or_init(|| stsb_spearman(&fp32_embedder(shared), shared))
}

#[test]
#[ignore = "needs ../shared (golden vectors, fp32 model, STS-B); scripts/test.sh runs it when ../shared is there"]
fn spearman_on_stsb_dev() {
    let shared = crate::common::shared_dir();
    let rho = fp32_stsb_spearman(&shared);
    eprintln!("STS-B dev Spearman: {rho:.4} (reference 0.8672)");
    assert!((rho - 0.8672).abs() <= 0.005, "Spearman {rho}");
}

/// `embed.precision: int8` keeps parity: minimum cosine >= 0.99 against sentence-transformers
/// on every golden input, and STS-B Spearman within 0.005 of the fp32 model's.
#[test]
#[ignore = "needs ../shared (golden vectors, fp32 model, STS-B); scripts/test.sh runs it when ../shared is there"]
fn int8_keeps_parity_with_sentence_transformers() {
    let shared = crate::common::shared_dir();
    let int8 = int8_embedder(&shared);
    assert_eq!(int8.precision(), Precision::Int8);
    let cosines = golden_cosines(&int8, &shared);
    let (worst, min) = min_with_index(&cosines);
    let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
    eprintln!("int8: minimum cosine {min:.5} (input {worst}), mean {mean:.5}");
    assert!(min >= 0.99, "input {worst}: cosine {min}");
    // Quantisation really happened: the vectors are close to, not equal to, fp32's.
    assert!(
        min < 0.99999,
        "int8 vectors equal fp32's: was the model quantised?"
    );

    let fp32_rho = fp32_stsb_spearman(&shared);
    let int8_rho = stsb_spearman(&int8, &shared);
    eprintln!("STS-B dev Spearman: fp32 {fp32_rho:.4}, int8 {int8_rho:.4}");
    assert!(
        (int8_rho - fp32_rho).abs() <= 0.005,
        "int8 Spearman {int8_rho} vs fp32 {fp32_rho}"
    );
}

/// An int8 vector does not depend on the rows sharing its micro-batch (activations are
/// quantised per token): short texts embedded alone, among long neighbours and among other short
/// ones give the same vectors.
#[test]
#[ignore = "needs ../shared (golden vectors, fp32 model, STS-B); scripts/test.sh runs it when ../shared is there"]
fn int8_vectors_do_not_depend_on_their_batch() {
    let shared = crate::common::shared_dir();
    let dir = shared.join("models/all-MiniLM-L6-v2");
    let mut opts = EmbedSpec::new(dir.to_str().unwrap());
    opts.precision = Precision::Int8;
    // One micro-batch for every call below.
    opts.batch_rows = 512;
    opts.batch_tokens = Some(1 << 20);
    let int8 = Embedder::load(&opts).expect("quantise and load the int8 model");
    let inputs = golden_inputs(&shared);
    let mut by_length: Vec<&str> = inputs.iter().map(String::as_str).collect();
    by_length.sort_by_key(|t| t.len());
    let short = &by_length[..40];
    let long = &by_length[by_length.len() - 8..];
    let dim = int8.dim();
    let alone: Vec<Vec<f32>> = short
        .iter()
        .map(|t| int8.embed(&[Some(t)]).unwrap())
        .collect();
    let with = |neighbours: &[&str]| -> Vec<Vec<f32>> {
        let texts: Vec<Option<&str>> = short.iter().chain(neighbours).map(|t| Some(*t)).collect();
        let v = int8.embed(&texts).unwrap();
        v.chunks(dim)
            .take(short.len())
            .map(<[f32]>::to_vec)
            .collect()
    };
    for (what, batch) in [
        ("among long texts", with(long)),
        ("among short texts", with(&by_length[40..80])),
    ] {
        let worst = alone
            .iter()
            .zip(&batch)
            .map(|(a, b)| crate::common::cosine(a, b))
            .fold(f64::MAX, f64::min);
        eprintln!("int8, alone vs {what}: minimum cosine {worst:.8}");
        assert!(worst >= 0.99999, "{what}: minimum cosine {worst}");
    }
}

/// The fp16 model made for GPUs (BERT fusions, fp16 weights, fp32 output) is checked here on the
/// CPU, which ONNX Runtime can also run it on: the conversion must keep parity. Its speed needs a
/// GPU (`cargo bench --bench throughput -- --device cuda:0 --precision fp16`).
#[test]
#[ignore = "needs ../shared (golden vectors, fp32 model, STS-B); scripts/test.sh runs it when ../shared is there"]
fn fp16_model_keeps_parity() {
    let shared = crate::common::shared_dir();
    let dir = shared.join("models/all-MiniLM-L6-v2");
    let mut opts = EmbedSpec::new(dir.to_str().unwrap());
    opts.precision = Precision::Fp16;
    let fp16 = Embedder::load(&opts).expect("convert and load the fp16 model");
    // MiniLM pools by mean: the graph does it, as on a GPU.
    assert!(
        fp16.pools_in_graph(),
        "the fp16 graph has its mean-pooled output"
    );
    let cosines = golden_cosines(&fp16, &shared);
    let (worst, min) = min_with_index(&cosines);
    eprintln!("fp16 (run on the CPU): minimum cosine {min:.6} (input {worst})");
    assert!(min >= 0.999, "input {worst}: cosine {min}");
}

/// Where a prompt is left out of pooling (`include_prompt: false`), the fp16 graph's own mean
/// (which averages every token the mask keeps) does not apply: every token's vector comes back
/// and embedflow pools without the prompt, as it does in fp32.
#[test]
#[ignore = "needs ../shared (golden vectors, fp32 model, STS-B); scripts/test.sh runs it when ../shared is there"]
fn fp16_pools_without_a_prompt_left_out_of_pooling() {
    let shared = crate::common::shared_dir();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("minilm-without-prompt");
    let src = shared.join("models/all-MiniLM-L6-v2");
    for entry in walk(&src) {
        let to = dir.join(entry.strip_prefix(&src).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &to).unwrap();
    }
    let pooling = dir.join("1_Pooling/config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&pooling).unwrap()).unwrap();
    config["include_prompt"] = serde_json::Value::Bool(false);
    std::fs::write(&pooling, config.to_string()).unwrap();

    let load = |precision| {
        let mut opts = EmbedSpec::new(dir.to_str().unwrap());
        opts.precision = precision;
        opts.prompt = Some("search document: ".into());
        Embedder::load(&opts).unwrap()
    };
    let (fp16, fp32) = (load(Precision::Fp16), load(Precision::Fp32));
    assert!(
        fp16.pools_in_graph(),
        "the fp16 graph has its mean-pooled output"
    );
    let texts = [
        Some("A crab walks sideways along the rocks at low tide."),
        Some("Ownership rules let Rust free memory without a garbage collector."),
    ];
    let (a, b) = (fp16.embed(&texts).unwrap(), fp32.embed(&texts).unwrap());
    let dim = fp32.dim();
    for r in 0..texts.len() {
        let cos = crate::common::cosine(&a[r * dim..(r + 1) * dim], &b[r * dim..(r + 1) * dim]);
        assert!(
            cos >= 0.999,
            "row {r}: fp16 vs fp32 without the prompt: {cos}"
        );
    }
    // The graph's mean over every token (the prompt's too) is a different vector.
    std::fs::write(&pooling, {
        config["include_prompt"] = serde_json::Value::Bool(true);
        config.to_string()
    })
    .unwrap();
    let with_prompt = load(Precision::Fp32).embed(&texts).unwrap();
    let cos = crate::common::cosine(&a[..dim], &with_prompt[..dim]);
    assert!(
        cos < 0.999,
        "pooling with the prompt gives another vector: {cos}"
    );
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

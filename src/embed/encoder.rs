//! The `Embedder`: tokenizer + ONNX Runtime session + pooling, matching sentence-transformers.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{OutputSelector, RunOptions, Session};
use ort::value::Tensor;
use tokenizers::{Encoding, PaddingParams, Tokenizer, TruncationParams};

use super::batch::plan_micro_batches;
use super::model::{ModelFiles, Pooling};
use super::spec::{Device, EmbedSpec, Precision};
use super::{prepare, runtime};
use crate::error::invalid;

/// Rows tokenised ahead of inference within one `embed()` call: for calls larger than this, the
/// next chunk is tokenised while this one runs. A pipeline's record batches are smaller
/// ([`crate::plan::PLAN_BATCH_ROWS`]), so there the overlap comes from DataFusion's partitions
/// instead: while one partition's micro-batches hold the session, another tokenises its batch.
const TOKENIZE_CHUNK_ROWS: usize = 2048;

/// Where embedding time goes (summed over threads), for `-vv` and the benchmarks.
#[derive(Debug, Default)]
pub struct Timings {
    tokenize_ns: AtomicU64,
    wait_ns: AtomicU64,
    infer_ns: AtomicU64,
}

impl Timings {
    fn add(counter: &AtomicU64, since: std::time::Instant) {
        counter.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// (tokenising, waiting for a free session, inference) in seconds.
    pub fn seconds(&self) -> (f64, f64, f64) {
        let s = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64 / 1e9;
        (s(&self.tokenize_ns), s(&self.wait_ns), s(&self.infer_ns))
    }
}

/// Token ids and mask for one text, exactly as fed to the model (unpadded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    pub attention_mask: Vec<u32>,
}

/// Turns texts into sentence-transformers-equal vectors.
pub struct Embedder {
    files: ModelFiles,
    /// The ONNX graph that runs: the model's own, or its prepared (int8) form.
    graph: std::path::PathBuf,
    tokenizer: Tokenizer,
    /// Two sessions per GPU, one on the CPU; micro-batches are spread over them.
    sessions: Vec<Mutex<Session>>,
    precision: Precision,
    input_names: InputNames,
    output_name: String,
    /// The graph's own mean pooling (`embedflow_mean_pooled`, added to prepared fp16 models):
    /// asked for alone when the model pools by mean over every token, so a GPU returns one
    /// vector per row instead of every token's.
    mean_pooled: Option<String>,
    dim: usize,
    /// `embed.dimensions`: vectors cut to their first N dimensions (Matryoshka).
    truncate_to: Option<usize>,
    /// The prompts put before rows and before queries.
    prompts: Prompts,
    max_seq_length: usize,
    batch_tokens: usize,
    batch_rows: usize,
    tokens_seen: AtomicU64,
    /// Set when the run failed elsewhere (its sink): `embed()` gives up at the next
    /// micro-batch instead of finishing a record batch nobody will write.
    abandoned: AtomicBool,
    /// Micro-batches left unrun because of that.
    skipped_batches: AtomicU64,
    /// Texts longer than `max_seq_length`, cut as sentence-transformers cuts them.
    truncated_rows: AtomicU64,
    timings: Timings,
    /// The settings it was loaded with (they travel to cluster executors with `embed()`).
    spec: EmbedSpec,
}

#[derive(Debug)]
struct InputNames {
    ids: String,
    mask: Option<String>,
    type_ids: Option<String>,
    /// Decoder exports take positions: counted over each row's own tokens, so a left-padded
    /// row gets the positions it would have alone.
    positions: Option<String>,
}

/// The mean-pooled output `prepare_model.py` adds to the fp16 models it prepares.
const MEAN_POOLED: &str = "embedflow_mean_pooled";

/// Which side of a search a text is on: a row of the table (a document) or a query. Each side
/// has its own prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Document,
    Query,
}

/// A prompt put before the texts of one side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prompt {
    pub text: String,
    /// Word pieces the prompt adds to a text (without special tokens): what it takes from
    /// `max_seq_length` and from a chunk's budget.
    pub tokens: usize,
    /// Leading tokens left out of pooling when the pooling's `include_prompt` is false:
    /// sentence-transformers' `prompt_length`, the prompt's tokenised length less one.
    pub prompt_length: usize,
}

/// The prompts of both sides.
#[derive(Debug, Clone, Default)]
pub struct Prompts {
    pub document: Option<Prompt>,
    pub query: Option<Prompt>,
}

impl Prompts {
    fn of(&self, side: Side) -> Option<&Prompt> {
        match side {
            Side::Document => self.document.as_ref(),
            Side::Query => self.query.as_ref(),
        }
    }
}

/// The prompt text for one side, as sentence-transformers picks it: a literal, a name from the
/// model's `prompts`, else `fallback`.
fn pick_prompt(
    files: &ModelFiles,
    literal: &Option<String>,
    name: &Option<String>,
    key: &str,
    fallback: Fallback,
) -> Result<Option<String>> {
    let prompts = &files.settings.prompts;
    if let Some(p) = literal {
        return Ok(Some(p.clone()));
    }
    if let Some(n) = name {
        return match prompts.get(n) {
            Some(p) => Ok(Some(p.clone())),
            None => Err(invalid(
                key,
                format!(
                    "`{n}` is not one of model {}'s prompts ({}; from {})",
                    files.name,
                    super::model::names(prompts),
                    files
                        .dir
                        .join("config_sentence_transformers.json")
                        .display()
                ),
            )
            .into()),
        };
    }
    Ok(match fallback {
        Fallback::DefaultPromptName => files
            .settings
            .default_prompt_name
            .as_ref()
            .and_then(|n| prompts.get(n).cloned()),
        Fallback::Named(name) => prompts.get(name).cloned(),
    })
}

/// The prompt a side gets when the pipeline names none.
#[derive(Clone, Copy)]
enum Fallback {
    /// `encode()`: the model's `default_prompt_name`, if any.
    DefaultPromptName,
    /// `encode_query()`: the model's prompt of this name, if any (sentence-transformers 6 then
    /// applies no `default_prompt_name`).
    Named(&'static str),
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("model", &self.files.name)
            .field("dim", &self.dim)
            .finish()
    }
}

fn ort_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("{e}")
}

/// A CPU session: all graph optimisations, one intra-op thread per core, inter-op parallelism
/// off. Intra-op threads spin briefly between operators (ONNX Runtime's default) unless
/// `OMP_WAIT_POLICY=PASSIVE` (see [`spin_wait`]).
fn cpu_session(
    env: &ort::environment::Environment,
    files: &ModelFiles,
    onnx: &Path,
    threads: Option<usize>,
) -> Result<Session> {
    let threads = threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let spin = spin_wait();
    tracing::debug!(
        "model {}: ONNX Runtime on the CPU, {threads} intra-op threads, {} between operators",
        files.name,
        if spin {
            "spinning"
        } else {
            "sleeping (OMP_WAIT_POLICY=PASSIVE)"
        }
    );
    Session::builder(env)
        .map_err(ort_err)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(ort_err)?
        .with_intra_threads(threads)
        .map_err(ort_err)?
        .with_inter_threads(1)
        .map_err(ort_err)?
        .with_intra_op_spinning(spin)
        .map_err(ort_err)?
        .commit_from_file(onnx)
        .map_err(|e| load_error(files, onnx, e))
}

/// Whether ONNX Runtime's intra-op threads spin between operators rather than sleep, from
/// `OMP_WAIT_POLICY`, the variable OpenMP programs (PyTorch, MKL) read for the same choice:
/// `PASSIVE` sleeps, anything else spins. Spinning makes a run that has the cores to itself
/// 2-10% faster (README, "Speed"); where processes share cores (shards side by side, several
/// Airflow tasks on one worker, the test suite), a spinning thread burns the CPU another
/// process is waiting for: the test suite took 14% less CPU with `PASSIVE`.
fn spin_wait() -> bool {
    !std::env::var("OMP_WAIT_POLICY").is_ok_and(|v| v.trim().eq_ignore_ascii_case("passive"))
}

/// Writes `from`'s graph to `to` with its weights in [`prepare::WEIGHTS_FILE`] beside it: an
/// ONNX Runtime session with every optimisation off saves the graph it loaded, as it is.
fn save_with_weights_beside(
    env: &ort::environment::Environment,
    from: &Path,
    to: &Path,
) -> Result<()> {
    Session::builder(env)
        .map_err(ort_err)?
        .with_optimization_level(GraphOptimizationLevel::Disable)
        .map_err(ort_err)?
        .with_intra_threads(1)
        .map_err(ort_err)?
        .with_optimized_model_path(to)
        .map_err(ort_err)?
        .with_config_entry(
            "session.optimized_model_external_initializers_file_name",
            prepare::WEIGHTS_FILE,
        )
        .map_err(ort_err)?
        .with_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes",
            "1024",
        )
        .map_err(ort_err)?
        .commit_from_file(from)
        .map_err(ort_err)?;
    Ok(())
}

/// Sessions per GPU. Each has its own CUDA stream: while one copies a micro-batch in or its
/// output out (about 25 MB per 16,384 tokens) and hands it to its thread, the other computes.
const CUDA_SESSIONS_PER_DEVICE: usize = 2;

const CUDA_HINT: &str = "embed.device cuda needs ONNX Runtime from the PyPI onnxruntime-gpu wheel \
(with the nvidia-* CUDA and cuDNN wheels it names, e.g. `pip install onnxruntime-gpu[cuda,cudnn]`) \
and ORT_DYLIB_PATH or embed.onnxruntime pointing at its libonnxruntime.so; embedflow never falls \
back to the CPU";

/// A session on CUDA device `id`. The CUDA execution provider must register: a CPU-only
/// ONNX Runtime library, missing CUDA/cuDNN libraries or a missing device are errors, never a
/// silent fall back to the CPU.
fn cuda_session(
    env: &ort::environment::Environment,
    files: &ModelFiles,
    onnx: &Path,
    id: u32,
) -> Result<Session> {
    use ort::ep::ExecutionProvider;
    let mut builder = Session::builder(env)
        .map_err(ort_err)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(ort_err)?;
    let ep = ort::ep::CUDA::default().with_device_id(id as i32);
    ep.register(&mut builder).map_err(|e| {
        anyhow!(
            "embed.device cuda:{id}: the CUDA execution provider did not register: {e}; {CUDA_HINT}"
        )
    })?;
    builder.commit_from_file(onnx).map_err(|e| {
        anyhow!(
            "embed.device cuda:{id}: model {}: cannot load {} on the GPU: {e}; {CUDA_HINT}",
            files.name,
            onnx.display()
        )
    })
}

fn load_error(files: &ModelFiles, onnx: &Path, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("model {}: cannot load {}: {e}", files.name, onnx.display())
}

impl Embedder {
    /// Resolves the model, loads ONNX Runtime and the tokenizer, and probes the output width.
    pub fn load(opts: &EmbedSpec) -> Result<Embedder> {
        let files = super::model::resolve(&opts.model)?;
        Self::from_files(files, opts)
    }

    pub fn from_files(files: ModelFiles, opts: &EmbedSpec) -> Result<Embedder> {
        let env = runtime::environment(opts.onnxruntime.as_deref())?;
        let max_seq_length = opts.max_seq_length.unwrap_or(files.settings.max_seq_length);
        if let Some(limit) = files.settings.max_positions
            && max_seq_length > limit
        {
            let key = if opts.max_seq_length.is_some() {
                "embed.max_seq_length"
            } else {
                "the model's sentence_bert_config.json max_seq_length"
            };
            return Err(invalid(
                "embed.max_seq_length",
                format!(
                    "{max_seq_length} ({key}) is more than model {} allows: its position embeddings cover {limit} tokens (max_position_embeddings in {}); use at most {limit}",
                    files.name,
                    files.dir.join("config.json").display()
                ),
            )
            .into());
        }

        let mut tokenizer = Tokenizer::from_file(&files.tokenizer).map_err(|e| {
            anyhow!(
                "model {}: cannot read {}: {e}",
                files.name,
                files.tokenizer.display()
            )
        })?;
        // tokenizer.json carries fixed padding/truncation; sentence-transformers overrides both:
        // truncate at max_seq_length (counting [CLS] and [SEP]) and pad per batch (done here).
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                ..Default::default()
            }))
            .map_err(|e| anyhow!("model {}: tokenizer truncation: {e}", files.name))?;
        tokenizer.with_padding(None::<PaddingParams>);

        if let Device::Cuda(_) = &opts.device {
            // Before any model preparation: a CPU-only library can never run on the GPU.
            use ort::ep::ExecutionProvider;
            if !ort::ep::CUDA::is_available().unwrap_or(false) {
                bail!(
                    "embed.device {}: the ONNX Runtime library in use has no CUDA execution provider; {CUDA_HINT}",
                    opts.device
                );
            }
        }
        let onnx = prepare::model_for(&files, opts.precision, &tokenizer)?;
        let sessions = match &opts.device {
            Device::Cpu => {
                // fp32 and int8 load their weights mapped from a copy of the graph that keeps
                // them beside it. Not fp16: a CPU session inserts casts into an fp16 graph.
                let load = if opts.precision == Precision::Fp16 {
                    onnx.clone()
                } else {
                    prepare::with_weights_beside(&onnx, |from, to| {
                        save_with_weights_beside(&env, from, to)
                    })
                };
                vec![cpu_session(&env, &files, &load, opts.threads)?]
            }
            Device::Cuda(ids) => ids
                .iter()
                .flat_map(|&id| std::iter::repeat_n(id, CUDA_SESSIONS_PER_DEVICE))
                .map(|id| cuda_session(&env, &files, &onnx, id))
                .collect::<Result<Vec<_>>>()?,
        };
        let session = &sessions[0];
        let names: Vec<String> = session
            .inputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let find = |n: &str| names.iter().find(|x| x.as_str() == n).cloned();
        let input_names = InputNames {
            ids: find("input_ids").with_context(|| {
                format!(
                    "model {}: {} has no input_ids input (inputs: {})",
                    files.name,
                    files.onnx.display(),
                    names.join(", ")
                )
            })?,
            mask: find("attention_mask"),
            type_ids: find("token_type_ids"),
            positions: find("position_ids"),
        };
        let outputs: Vec<String> = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let output_name = outputs
            .iter()
            .find(|n| n.as_str() == "last_hidden_state" || n.as_str() == "token_embeddings")
            .or(outputs.first())
            .cloned()
            .with_context(|| format!("model {}: the ONNX graph has no outputs", files.name))?;

        let mean_pooled = outputs
            .iter()
            .find(|n| n.as_str() == MEAN_POOLED)
            .filter(|_| files.settings.pooling == Pooling::Mean)
            .cloned();

        let mut embedder = Embedder {
            files,
            graph: onnx.clone(),
            tokenizer,
            sessions: sessions.into_iter().map(Mutex::new).collect(),
            precision: opts.precision,
            input_names,
            output_name,
            mean_pooled,
            dim: 0,
            truncate_to: None,
            prompts: Prompts::default(),
            max_seq_length,
            batch_tokens: opts.batch_tokens(),
            batch_rows: opts.batch_rows.max(1),
            tokens_seen: AtomicU64::new(0),
            abandoned: AtomicBool::new(false),
            skipped_batches: AtomicU64::new(0),
            truncated_rows: AtomicU64::new(0),
            timings: Timings::default(),
            spec: opts.clone(),
        };
        // Probe the width with one tiny input: it also proves the model runs.
        let probe = embedder.tokenize(&[""])?;
        let mut dim = 0;
        for session in &embedder.sessions {
            dim = embedder.run_batch(session, &probe, &[0], Side::Document)?.1;
        }
        embedder.dim = dim;
        if let Some(n) = opts.dimensions {
            if n > dim {
                return Err(invalid(
                    "embed.dimensions",
                    format!(
                        "{n} is more than model {} gives ({dim} dimensions)",
                        embedder.files.name
                    ),
                )
                .into());
            }
            embedder.truncate_to = (n < dim).then_some(n);
            embedder.dim = n;
        }
        let document = pick_prompt(
            &embedder.files,
            &opts.prompt,
            &opts.prompt_name,
            "embed.prompt_name",
            Fallback::DefaultPromptName,
        )?;
        let query = pick_prompt(
            &embedder.files,
            &opts.query_prompt,
            &opts.query_prompt_name,
            "embed.query_prompt_name",
            Fallback::Named("query"),
        )?;
        // An empty prompt is none, as in sentence-transformers.
        embedder.prompts = Prompts {
            document: document
                .filter(|p| !p.is_empty())
                .map(|p| embedder.measure_prompt(p))
                .transpose()?,
            query: query
                .filter(|p| !p.is_empty())
                .map(|p| embedder.measure_prompt(p))
                .transpose()?,
        };
        if let Some(p) = &embedder.prompts.document
            && p.tokens + 2 >= max_seq_length
        {
            return Err(invalid(
                "embed.prompt",
                format!(
                    "the prompt takes {} of the {max_seq_length} word pieces a text may have (max_seq_length): no room is left for the text",
                    p.tokens
                ),
            )
            .into());
        }
        embedder.tokens_seen.store(0, Ordering::Relaxed);
        embedder.timings = Timings::default();
        Ok(embedder)
    }

    /// Whether the graph pools (its `embedflow_mean_pooled` output) and returns one vector per
    /// row, rather than every token's vector for embedflow to pool.
    pub fn pools_in_graph(&self) -> bool {
        self.mean_pooled.is_some()
    }

    /// The settings it was loaded with.
    pub fn spec(&self) -> &EmbedSpec {
        &self.spec
    }

    /// The prompt before each side's texts, as the model and the settings choose it.
    pub fn prompt(&self, side: Side) -> Option<&Prompt> {
        self.prompts.of(side)
    }

    /// The word pieces a row's text may have, the document prompt's taken out: what a chunk
    /// of `embed.chunking` may fill besides the special tokens.
    pub fn text_max_seq_length(&self) -> usize {
        self.max_seq_length
            .saturating_sub(self.prompts.document.as_ref().map_or(0, |p| p.tokens))
    }

    fn measure_prompt(&self, text: String) -> Result<Prompt> {
        let encoded = self
            .tokenizer
            .encode(text.as_str(), true)
            .map_err(|e| anyhow!("tokenizer failed on the prompt: {e}"))?;
        // sentence-transformers' prompt_length: the tokenised prompt, less a trailing special
        // token ([SEP], EOS).
        let trailing_special = encoded.get_special_tokens_mask().last() == Some(&1);
        let with_special = encoded.get_ids().len() - usize::from(trailing_special);
        let plain = self
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| anyhow!("tokenizer failed on the prompt: {e}"))?
            .get_ids()
            .len();
        Ok(Prompt {
            text,
            tokens: plain,
            prompt_length: with_special,
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn model_name(&self) -> &str {
        &self.files.name
    }

    pub fn model_files(&self) -> &ModelFiles {
        &self.files
    }

    /// The ONNX graph that runs (after any preparation for the precision).
    pub fn graph_path(&self) -> &std::path::Path {
        &self.graph
    }

    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Tokens embedded so far (after truncation, without padding).
    pub fn tokens_seen(&self) -> u64 {
        self.tokens_seen.load(Ordering::Relaxed)
    }

    /// Makes `embed()` calls in flight, and any later one, stop at their next micro-batch: the
    /// run failed, and what they would embed would not be written.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }

    /// Micro-batches not run since [`Self::abandon`].
    pub fn skipped_batches(&self) -> u64 {
        self.skipped_batches.load(Ordering::Relaxed)
    }

    /// Ends an `embed()` call between micro-batches once a signal asked the process to stop
    /// or the run was abandoned: a record batch of long texts takes many seconds, a
    /// micro-batch a fraction of one. `left` counts the micro-batches the call leaves unrun.
    fn stop_point(&self, left: impl FnOnce() -> usize) -> Result<()> {
        if let Some(signal) = crate::signals::stop_requested() {
            return Err(crate::error::Interrupted {
                signal,
                outcome: "embedding stopped between micro-batches".into(),
            }
            .into());
        }
        if self.abandoned.load(Ordering::Relaxed) {
            self.skipped_batches
                .fetch_add(left() as u64, Ordering::Relaxed);
            bail!("embedding stopped between micro-batches: the run failed");
        }
        Ok(())
    }

    /// The model's tokenizer, as configured for inference (truncating at `max_seq_length`).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Texts embedded so far that were longer than `max_seq_length` and cut.
    pub fn truncated_rows(&self) -> u64 {
        self.truncated_rows.load(Ordering::Relaxed)
    }

    /// The longest input the model's position embeddings allow, when known.
    pub fn max_positions(&self) -> Option<usize> {
        self.files.settings.max_positions
    }

    /// Where embedding time went so far.
    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    /// Tokenises texts as sentence-transformers does (without a prompt).
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Encoding>> {
        self.tokenize_as(texts, None)
    }

    /// Tokenises texts after `prompt`, as sentence-transformers does: the prompt is put before
    /// each text, and both share `max_seq_length`.
    fn tokenize_as(&self, texts: &[&str], prompt: Option<&Prompt>) -> Result<Vec<Encoding>> {
        let start = std::time::Instant::now();
        let out = match prompt {
            Some(p) => self.tokenizer.encode_batch(
                texts
                    .iter()
                    .map(|t| format!("{}{t}", p.text))
                    .collect::<Vec<_>>(),
                true,
            ),
            None => self.tokenizer.encode_batch(texts.to_vec(), true),
        }
        .map_err(|e| anyhow!("tokenizer failed: {e}"));
        Timings::add(&self.timings.tokenize_ns, start);
        out
    }

    /// Token ids and attention mask for one text.
    pub fn tokens(&self, text: &str) -> Result<Tokens> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| anyhow!("tokenizer failed: {e}"))?;
        Ok(Tokens {
            ids: enc.get_ids().to_vec(),
            attention_mask: enc.get_attention_mask().to_vec(),
        })
    }

    /// Embeds texts; `None` rows get no vector. Returns row-major vectors (`dim` floats per row,
    /// zeros for `None` rows) in the input order.
    ///
    /// Rows are tokenised in chunks of [`TOKENIZE_CHUNK_ROWS`] on a second thread while the
    /// previous chunk runs through the model; within a chunk, rows are sorted by length into
    /// token-budget micro-batches, which are spread over the sessions (two per GPU).
    pub fn embed(&self, texts: &[Option<&str>]) -> Result<Vec<f32>> {
        self.embed_counting(texts).map(|(vectors, _)| vectors)
    }

    /// [`Embedder::embed`], also returning the tokens embedded (after truncation, without
    /// padding) for these texts alone.
    pub fn embed_counting(&self, texts: &[Option<&str>]) -> Result<(Vec<f32>, u64)> {
        self.embed_counting_as(texts, Side::Document)
    }

    /// Embeds queries (after the query prompt).
    pub fn embed_queries(&self, texts: &[Option<&str>]) -> Result<Vec<f32>> {
        self.embed_counting_as(texts, Side::Query)
            .map(|(vectors, _)| vectors)
    }

    /// [`Embedder::embed_counting`] for the texts of `side`.
    pub fn embed_counting_as(&self, texts: &[Option<&str>], side: Side) -> Result<(Vec<f32>, u64)> {
        let mut tokens = 0u64;
        let present: Vec<usize> = (0..texts.len()).filter(|&i| texts[i].is_some()).collect();
        let mut out = vec![0f32; texts.len() * self.dim];
        let chunks: Vec<&[usize]> = present.chunks(TOKENIZE_CHUNK_ROWS).collect();
        std::thread::scope(|scope| -> Result<()> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Encoding>>>(1);
            let tokenizer = scope.spawn(move || {
                for chunk in &chunks {
                    let strs: Vec<&str> = chunk
                        .iter()
                        .map(|&i| texts[i].unwrap_or_default())
                        .collect();
                    if tx
                        .send(self.tokenize_as(&strs, self.prompts.of(side)))
                        .is_err()
                    {
                        return;
                    }
                }
            });
            let mut done = 0usize;
            for encodings in rx {
                let encodings = encodings?;
                tokens += encodings
                    .iter()
                    .map(|e| e.get_ids().len() as u64)
                    .sum::<u64>();
                let rows = &present[done..done + encodings.len()];
                done += encodings.len();
                self.embed_chunk(&encodings, rows, &mut out, side)?;
            }
            tokenizer
                .join()
                .map_err(|_| anyhow!("the tokenizer thread panicked"))?;
            Ok(())
        })?;
        Ok((out, tokens))
    }

    /// Runs one tokenised chunk; `rows[j]` is the output row of `encodings[j]`.
    fn embed_chunk(
        &self,
        encodings: &[Encoding],
        rows: &[usize],
        out: &mut [f32],
        side: Side,
    ) -> Result<()> {
        let lengths: Vec<usize> = encodings.iter().map(|e| e.get_ids().len()).collect();
        let cut = encodings
            .iter()
            .filter(|e| !e.get_overflowing().is_empty())
            .count();
        self.truncated_rows.fetch_add(cut as u64, Ordering::Relaxed);
        let batches = plan_micro_batches(&lengths, self.batch_tokens, self.batch_rows);
        let dim = self.dim;
        let mut place = |batch: &[usize], vectors: &[f32]| {
            for (k, &j) in batch.iter().enumerate() {
                let row = rows[j];
                out[row * dim..(row + 1) * dim].copy_from_slice(&vectors[k * dim..(k + 1) * dim]);
            }
        };
        if self.sessions.len() == 1 {
            for (b, batch) in batches.iter().enumerate() {
                self.stop_point(|| batches.len() - b)?;
                let (vectors, _) = self.run_batch(&self.sessions[0], encodings, batch, side)?;
                place(batch, &vectors);
            }
            return Ok(());
        }
        // Several sessions (two per GPU): each session's worker takes the next micro-batch when
        // it is free.
        let next = AtomicUsize::new(0);
        let results = std::thread::scope(|scope| {
            let workers: Vec<_> = self
                .sessions
                .iter()
                .map(|session| {
                    let (next, batches) = (&next, &batches);
                    scope.spawn(move || -> Result<Vec<(usize, Vec<f32>)>> {
                        let mut done = Vec::new();
                        loop {
                            let b = next.fetch_add(1, Ordering::Relaxed);
                            let Some(batch) = batches.get(b) else {
                                return Ok(done);
                            };
                            // This one and those no worker has taken yet (which it takes).
                            self.stop_point(|| {
                                1 + batches
                                    .len()
                                    .saturating_sub(next.swap(batches.len(), Ordering::Relaxed))
                            })?;
                            done.push((b, self.run_batch(session, encodings, batch, side)?.0));
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .map_err(|_| anyhow!("an inference thread panicked"))?
                })
                .collect::<Result<Vec<_>>>()
        })?;
        for (b, vectors) in results.into_iter().flatten() {
            place(&batches[b], &vectors);
        }
        Ok(())
    }

    /// Runs one micro-batch (rows `batch` of `encodings`), returning pooled vectors in batch order.
    fn run_batch(
        &self,
        session: &Mutex<Session>,
        encodings: &[Encoding],
        batch: &[usize],
        side: Side,
    ) -> Result<(Vec<f32>, usize)> {
        let rows = batch.len();
        let seq = batch
            .iter()
            .map(|&i| encodings[i].get_ids().len())
            .max()
            .unwrap_or(0)
            .max(1);
        let settings = &self.files.settings;
        let mut ids = vec![0i64; rows * seq];
        let mut mask = vec![0i64; rows * seq];
        let mut positions = vec![0i64; rows * seq];
        let mut lengths = Vec::with_capacity(rows);
        let mut starts = Vec::with_capacity(rows);
        for (r, &i) in batch.iter().enumerate() {
            let e = &encodings[i];
            let len = e.get_ids().len();
            // Left padding puts a row's tokens at the end of its line.
            let start = if settings.pad_left { seq - len } else { 0 };
            for (c, (&id, &m)) in e.get_ids().iter().zip(e.get_attention_mask()).enumerate() {
                ids[r * seq + start + c] = id as i64;
                mask[r * seq + start + c] = m as i64;
                positions[r * seq + start + c] = c as i64;
            }
            lengths.push(len);
            starts.push(start);
        }
        // A prompt left out of pooling (`include_prompt: false`): its first tokens.
        let skip = match self.prompts.of(side) {
            Some(p) if !settings.include_prompt => p.prompt_length,
            _ => 0,
        };
        let tokens: u64 = lengths.iter().map(|&n| n as u64).sum();
        let shape = [rows as i64, seq as i64];
        let mut inputs: Vec<(
            std::borrow::Cow<'_, str>,
            ort::session::SessionInputValue<'_>,
        )> = Vec::new();
        inputs.push((
            self.input_names.ids.as_str().into(),
            Tensor::from_array((shape, ids)).map_err(ort_err)?.into(),
        ));
        if let Some(n) = &self.input_names.mask {
            inputs.push((
                n.as_str().into(),
                Tensor::from_array((shape, mask)).map_err(ort_err)?.into(),
            ));
        }
        if let Some(n) = &self.input_names.type_ids {
            inputs.push((
                n.as_str().into(),
                Tensor::from_array((shape, vec![0i64; rows * seq]))
                    .map_err(ort_err)?
                    .into(),
            ));
        }
        if let Some(n) = &self.input_names.positions {
            inputs.push((
                n.as_str().into(),
                Tensor::from_array((shape, positions))
                    .map_err(ort_err)?
                    .into(),
            ));
        }
        let waited = std::time::Instant::now();
        let mut session = session
            .lock()
            .map_err(|_| anyhow!("ONNX Runtime session poisoned by an earlier failure"))?;
        Timings::add(&self.timings.wait_ns, waited);
        let started = std::time::Instant::now();
        // One output only: the graph's mean pooling where it matches the model's pooling (no
        // prompt left out of it), else every token's vector, pooled here.
        let output_name = match &self.mean_pooled {
            Some(pooled) if skip == 0 => pooled,
            _ => &self.output_name,
        };
        let options = RunOptions::new()
            .map_err(ort_err)?
            .with_outputs(OutputSelector::no_default().with(output_name.as_str()));
        let mut outputs = session
            .run_with_options(inputs, &options)
            .map_err(|e| anyhow!("model {}: inference failed: {e}", self.files.name))?;
        Timings::add(&self.timings.infer_ns, started);
        // The output is owned past the session's lock: pooling (reading every token's vector)
        // overlaps the next micro-batch's inference. On a GPU, pooling under the lock left it
        // idle half the time.
        let output = outputs
            .remove(output_name.as_str())
            .with_context(|| format!("model {}: no output {output_name}", self.files.name))?;
        drop(outputs);
        drop(session);
        let (out_shape, hidden) = output
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow!("model {}: output {output_name}: {e}", self.files.name))?;
        let dims: Vec<i64> = out_shape.iter().copied().collect();
        let pooled = match dims.as_slice() {
            [b, s, d] if *b as usize == rows && *s as usize == seq => pool(
                hidden,
                Lines {
                    starts: &starts,
                    lengths: &lengths,
                    skip,
                    seq,
                    dim: *d as usize,
                },
                self.files.settings.pooling,
            ),
            // Models that pool inside the graph return [batch, dim].
            [b, d] if *b as usize == rows => {
                hidden.iter().copied().take(rows * *d as usize).collect()
            }
            other => bail!(
                "model {}: output {output_name} has shape {other:?}, expected [{rows}, {seq}, dim] or [{rows}, dim]",
                self.files.name
            ),
        };
        drop(output);
        let dim = pooled.len() / rows.max(1);
        let mut pooled = pooled;
        let normalize = self.files.settings.normalize;
        if normalize {
            pooled.chunks_mut(dim.max(1)).for_each(normalise);
        }
        let (pooled, dim) = match self.truncate_to {
            // Matryoshka: the first dimensions, as sentence-transformers' truncate_dim, made
            // unit length again when the model's vectors are.
            Some(n) => {
                let mut cut: Vec<f32> = pooled
                    .chunks(dim.max(1))
                    .flat_map(|v| v[..n].iter().copied())
                    .collect();
                if normalize {
                    cut.chunks_mut(n).for_each(normalise);
                }
                (cut, n)
            }
            None => (pooled, dim),
        };
        self.tokens_seen.fetch_add(tokens, Ordering::Relaxed);
        Ok((pooled, dim))
    }
}

fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

/// Where each row's tokens lie in a micro-batch's `[rows, seq, dim]` output: `lengths[r]`
/// tokens from `starts[r]` (after left padding), of which the first `skip` are a prompt left
/// out of pooling.
pub struct Lines<'a> {
    pub starts: &'a [usize],
    pub lengths: &'a [usize],
    pub skip: usize,
    pub seq: usize,
    pub dim: usize,
}

/// Pools each row's token vectors as sentence-transformers does (the tokenizer's attention
/// mask is all ones on a row's own tokens; the rest is padding).
pub fn pool(hidden: &[f32], lines: Lines<'_>, how: Pooling) -> Vec<f32> {
    let Lines {
        starts,
        lengths,
        skip,
        seq,
        dim,
    } = lines;
    let rows = lengths.len();
    let mut out = vec![0f32; rows * dim];
    let token = |r: usize, t: usize| &hidden[(r * seq + t) * dim..(r * seq + t + 1) * dim];
    for r in 0..rows {
        let o = &mut out[r * dim..(r + 1) * dim];
        let first = starts[r];
        let end = (first + lengths[r]).min(seq);
        // The pooled tokens: without a leading prompt when it is left out (never all of them).
        let from = if first + skip < end {
            first + skip
        } else {
            first
        };
        match how {
            // The first pooled token, as sentence-transformers takes the first one its mask
            // keeps (after a prompt left out).
            Pooling::Cls => o.copy_from_slice(token(r, from)),
            Pooling::LastToken => o.copy_from_slice(token(r, end.max(first + 1) - 1)),
            Pooling::Mean | Pooling::MeanSqrtLen => {
                for t in from..end {
                    o.iter_mut().zip(token(r, t)).for_each(|(a, b)| *a += b);
                }
                let count = ((end - from) as f32).max(1e-9);
                let denom = if how == Pooling::Mean {
                    count
                } else {
                    count.sqrt()
                };
                o.iter_mut().for_each(|x| *x /= denom);
            }
            Pooling::WeightedMean => {
                // Weights count positions from the row's first token (1, 2, ...).
                let mut total = 0f32;
                for t in from..end {
                    let w = (t - first + 1) as f32;
                    total += w;
                    o.iter_mut().zip(token(r, t)).for_each(|(a, b)| *a += w * b);
                }
                let denom = total.max(1e-9);
                o.iter_mut().for_each(|x| *x /= denom);
            }
            Pooling::Max => {
                o.iter_mut().for_each(|x| *x = f32::MIN);
                for t in from..end {
                    o.iter_mut()
                        .zip(token(r, t))
                        .for_each(|(a, b)| *a = a.max(*b));
                }
            }
        }
    }
    out
}

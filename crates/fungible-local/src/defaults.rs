//! What a local chat model does with the parameters a client leaves out.
//!
//! A small model sampled at temperature 1 with nothing else set rambles, and one decoded
//! greedily can repeat a phrase until its context is full. So every parameter a request does
//! not set takes the model's recommended value: its model card's sampling settings (the
//! [`Defaults::recommended`] table, by model family), a repetition penalty, and a cap on
//! generated tokens. `[local.defaults.MODEL]` overrides any of them, and any parameter the
//! client sets wins over all of them. Separately, a generation caught in a loop (the same run
//! of tokens over and over, see [`LoopDetector`]) stops with `finish_reason: "length"`.

use serde::Serialize;

/// The cap on generated tokens when neither the client nor the config gives one: about 7 s
/// of SmolLM2-135M on two cores, far more than a short answer needs, and a bound on how long
/// a request that runs away can hold a slot.
pub const DEFAULT_MAX_TOKENS: u32 = 512;

/// The effective defaults of one chat model (shown in `GET /v1/models`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Defaults {
    pub temperature: f64,
    pub top_p: f64,
    /// 0: off.
    pub top_k: u32,
    /// 0: off.
    pub min_p: f64,
    /// Divides the logits of the tokens among the last [`PENALTY_WINDOW`] (1: off).
    pub repetition_penalty: f64,
    pub max_tokens: u32,
    /// Stop a generation that repeats itself ([`LoopDetector`]).
    pub stop_loops: bool,
}

/// How many recent tokens the repetition penalty looks at (llama.cpp's default window).
pub const PENALTY_WINDOW: i32 = 64;

/// `[local.defaults.MODEL]` as configured: each field replaces the recommended value.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub max_tokens: Option<u32>,
    /// End a generation that repeats itself with finish_reason "length". Default: true.
    pub stop_loops: Option<bool>,
}

impl Overrides {
    /// Checks the ranges a request's own parameters are held to.
    pub fn validate(&self) -> Result<(), String> {
        let range = |name: &str, value: Option<f64>, lo: f64, hi: f64| match value {
            Some(v) if !(lo..=hi).contains(&v) => Err(format!("{name} must be between {lo} and {hi}, got {v}")),
            _ => Ok(()),
        };
        range("temperature", self.temperature, 0.0, 2.0)?;
        range("top_p", self.top_p, 0.0, 1.0)?;
        range("min_p", self.min_p, 0.0, 1.0)?;
        range("repetition_penalty", self.repetition_penalty, 0.01, 10.0)?;
        if self.max_tokens == Some(0) {
            return Err("max_tokens must be at least 1".into());
        }
        Ok(())
    }
}

impl Defaults {
    /// The recommended settings of the model family `name` (the model's name or its file's)
    /// belongs to, from the families' model cards and `generation_config.json`s; llama.cpp's
    /// own sampling defaults for a family not in the table.
    pub fn recommended(name: &str) -> Defaults {
        let name = name.to_ascii_lowercase();
        let base = Defaults {
            temperature: 0.8,
            top_p: 0.95,
            top_k: 40,
            min_p: 0.05,
            repetition_penalty: 1.1,
            max_tokens: DEFAULT_MAX_TOKENS,
            stop_loops: true,
        };
        if name.contains("smollm") {
            // HuggingFaceTB/SmolLM2-*-Instruct model card: temperature 0.2, top_p 0.9.
            Defaults { temperature: 0.2, top_p: 0.9, top_k: 0, min_p: 0.0, ..base }
        } else if name.contains("gemma-3") || name.contains("gemma3") {
            // Gemma 3's recommended settings: temperature 1.0, top_k 64, top_p 0.95.
            Defaults { temperature: 1.0, top_p: 0.95, top_k: 64, min_p: 0.0, repetition_penalty: 1.0, ..base }
        } else if name.contains("qwen2.5") || name.contains("qwen2_5") || name.contains("qwen2-5") {
            // Qwen2.5-*-Instruct generation_config.json.
            Defaults { temperature: 0.7, top_p: 0.8, top_k: 20, min_p: 0.0, repetition_penalty: 1.05, ..base }
        } else {
            base
        }
    }

    /// These defaults with `overrides` applied (`[local] max_tokens` first, then the model's
    /// own section).
    pub fn with(mut self, overrides: &Overrides) -> Defaults {
        let Overrides { temperature, top_p, top_k, min_p, repetition_penalty, max_tokens, stop_loops } = *overrides;
        self.temperature = temperature.unwrap_or(self.temperature);
        self.top_p = top_p.unwrap_or(self.top_p);
        self.top_k = top_k.unwrap_or(self.top_k);
        self.min_p = min_p.unwrap_or(self.min_p);
        self.repetition_penalty = repetition_penalty.unwrap_or(self.repetition_penalty);
        self.max_tokens = max_tokens.unwrap_or(self.max_tokens);
        self.stop_loops = stop_loops.unwrap_or(self.stop_loops);
        self
    }
}

/// Periods (in tokens) a loop is looked for at: a repeated word up to a repeated long sentence.
const MAX_PERIOD: usize = 64;
/// How long a periodic run must be before it is called a loop, in tokens: at least this many,
/// and at least [`MIN_REPEATS`] whole periods. A short echo ("very, very") or a
/// table's repeated separators stay well below it.
const MIN_LOOP_TOKENS: usize = 64;
const MIN_REPEATS: usize = 4;

/// Spots a generation stuck in a loop: its last tokens are one run of `p` tokens repeated
/// (period `p` up to [`MAX_PERIOD`]) for at least [`MIN_LOOP_TOKENS`] tokens and
/// [`MIN_REPEATS`] periods. Incremental: O([`MAX_PERIOD`]) per token.
#[derive(Debug, Clone)]
pub struct LoopDetector {
    /// The last `MAX_PERIOD` generated tokens, as a ring.
    recent: Vec<i32>,
    seen: usize,
    /// `runs[p - 1]`: how many tokens in a row (ending at the last) equal the token `p` before.
    runs: Vec<usize>,
}

impl Default for LoopDetector {
    fn default() -> LoopDetector {
        LoopDetector { recent: vec![0; MAX_PERIOD], seen: 0, runs: vec![0; MAX_PERIOD] }
    }
}

impl LoopDetector {
    /// Notes the next generated token; true when the generation is now a loop.
    pub fn push(&mut self, token: i32) -> bool {
        let mut looping = false;
        for p in 1..=MAX_PERIOD.min(self.seen) {
            let earlier = self.recent[(self.seen - p) % MAX_PERIOD];
            let run = &mut self.runs[p - 1];
            *run = if earlier == token { *run + 1 } else { 0 };
            // The periodic stretch is the run plus the period it repeats.
            let span = *run + p;
            if *run > 0 && span >= MIN_LOOP_TOKENS.max(MIN_REPEATS * p) {
                looping = true;
            }
        }
        self.recent[self.seen % MAX_PERIOD] = token;
        self.seen += 1;
        looping
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_loop(tokens: &[i32]) -> Option<usize> {
        let mut detector = LoopDetector::default();
        tokens.iter().position(|&t| detector.push(t))
    }

    #[test]
    fn a_repeated_phrase_is_a_loop_once_it_spans_64_tokens() {
        // "la France, " as 4 tokens, over and over: caught at the 64th token.
        let tokens: Vec<i32> = [7, 8, 9, 10].iter().copied().cycle().take(200).collect();
        assert_eq!(first_loop(&tokens), Some(63));
        // The same after some ordinary text.
        let mut text: Vec<i32> = (100..150).collect();
        text.extend(&tokens);
        assert_eq!(first_loop(&text), Some(50 + 63));
    }

    #[test]
    fn a_long_repeated_sentence_needs_four_repeats() {
        let sentence: Vec<i32> = (1000..1040).collect(); // 40 tokens
        let tokens: Vec<i32> = sentence.iter().copied().cycle().take(400).collect();
        assert_eq!(first_loop(&tokens), Some(4 * 40 - 1));
    }

    #[test]
    fn ordinary_text_and_short_echoes_are_not_loops() {
        // Counting never repeats; a word said twice, a row of 30 dashes, neither.
        let counting: Vec<i32> = (0..1000).flat_map(|n| [n, -1]).collect();
        assert_eq!(first_loop(&counting), None);
        let mut echo: Vec<i32> = (0..40).collect();
        echo.extend([5, 5, 5, 5]);
        echo.extend(std::iter::repeat_n(-7, 30));
        echo.extend(100..200);
        assert_eq!(first_loop(&echo), None);
    }

    #[test]
    fn periods_longer_than_64_are_not_looked_for() {
        let sentence: Vec<i32> = (0..80).collect();
        let tokens: Vec<i32> = sentence.iter().copied().cycle().take(800).collect();
        assert_eq!(first_loop(&tokens), None);
    }

    #[test]
    fn recommended_defaults_follow_the_family_and_overrides_win() {
        let smol = Defaults::recommended("smollm2-135m-instruct");
        assert_eq!((smol.temperature, smol.top_p), (0.2, 0.9));
        assert_eq!(smol.max_tokens, DEFAULT_MAX_TOKENS);
        assert_eq!(Defaults::recommended("Qwen2.5-0.5B-Instruct-Q4_K_M.gguf").top_k, 20);
        assert_eq!(Defaults::recommended("gemma-3-270m-it").top_k, 64);
        assert_eq!(Defaults::recommended("something-else").temperature, 0.8);
        let tuned = smol.with(&Overrides { temperature: Some(0.5), max_tokens: Some(64), ..Overrides::default() });
        assert_eq!((tuned.temperature, tuned.top_p, tuned.max_tokens), (0.5, 0.9, 64));
    }

    #[test]
    fn overrides_out_of_range_are_named() {
        let bad = Overrides { top_p: Some(1.5), ..Overrides::default() };
        assert_eq!(bad.validate().unwrap_err(), "top_p must be between 0 and 1, got 1.5");
        assert!(Overrides { max_tokens: Some(0), ..Overrides::default() }.validate().is_err());
    }
}

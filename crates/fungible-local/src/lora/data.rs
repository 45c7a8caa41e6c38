//! Examples as the server would see them: rendered with the GGUF's chat template and
//! tokenized by llama.cpp (the server's own `render` and `tokenize`), the answer's tokens
//! marked for the loss, then packed into micro-batches.

use std::path::Path;

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::model::Batch;
use super::{TrainError, TrainExample};
use crate::chat;
use crate::template::ChatTemplate;

/// One tokenized example: the prompt's tokens, then the answer's through its end-of-turn
/// token.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub tokens: Vec<u32>,
    /// Tokens `prompt..` are the answer, trained on.
    pub prompt: usize,
}

/// The base model's tokenizer and chat template (llama.cpp, vocabulary only).
pub(crate) struct Tokenizer {
    model: LlamaModel,
    template: ChatTemplate,
}

/// Examples turned into samples, with what did not fit.
#[derive(Debug, Default)]
pub(crate) struct Samples {
    pub samples: Vec<Sample>,
    pub skipped: usize,
    pub truncated: usize,
}

impl Tokenizer {
    pub fn open(base: &Path) -> Result<Tokenizer, TrainError> {
        if !base.is_file() {
            return Err(TrainError::BadInput(format!("the base model {} does not exist", base.display())));
        }
        let backend = chat::backend().map_err(|e| TrainError::Engine(e.message))?;
        let params = LlamaModelParams::default().with_vocab_only(true);
        let model = LlamaModel::load_from_file(backend, base, &params)
            .map_err(|e| TrainError::BadInput(format!("{} is not a loadable GGUF file: {e}", base.display())))?;
        let template = chat::chat_template(&model).map_err(TrainError::BadInput)?;
        Ok(Tokenizer { model, template })
    }

    /// The tokens of `example`, exactly the server's prompt tokens for its request followed
    /// by the tokens the model should generate: the answer through the first end-of-turn
    /// token (what ends a generation), without what the template puts after it.
    pub fn sample(&self, example: &TrainExample) -> Result<Sample, String> {
        let (prompt, rest) = self.template.render_answer(&example.request, &example.answer)?;
        let prompt = chat::tokenize(&self.model, &prompt);
        let vocab = self.model.vocab();
        let mut answer = chat::tokenize(&self.model, &rest);
        match answer.iter().position(|&t| vocab.is_eog(t)) {
            Some(end) => answer.truncate(end + 1),
            None => answer.push(vocab.eos()),
        }
        if answer.len() < 2 {
            return Err("the answer is empty".into());
        }
        let tokens: Vec<u32> = prompt.iter().chain(&answer).map(|t| t.0 as u32).collect();
        Ok(Sample { tokens, prompt: prompt.len() })
    }

    /// Every example as a sample of at most `max_len` tokens: an answer is cut to fit, an
    /// example whose prompt leaves no room for one token of answer is left out. An example
    /// that cannot be rendered is an error naming it.
    pub fn samples(&self, examples: &[TrainExample], max_len: usize, what: &str) -> Result<Samples, TrainError> {
        let mut out = Samples::default();
        for (i, example) in examples.iter().enumerate() {
            let mut sample = self
                .sample(example)
                .map_err(|e| TrainError::BadInput(format!("{what} example {}: {e}", i + 1)))?;
            if sample.prompt == 0 || sample.prompt + 1 >= max_len {
                out.skipped += 1;
                continue;
            }
            if sample.tokens.len() > max_len {
                sample.tokens.truncate(max_len);
                out.truncated += 1;
            }
            out.samples.push(sample);
        }
        Ok(out)
    }
}

/// The order of the samples in `epoch` (0-based): a shuffle seeded by the seed and the
/// epoch, so that a resumed run sees the same order.
pub(crate) fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = StdRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    order.shuffle(&mut rng);
    order
}

/// Packs `samples` in `order` into batches of at most `batch_tokens` tokens (a sample is
/// never split; each is at most `batch_tokens` long).
pub(crate) fn pack(samples: &[Sample], order: &[usize], batch_tokens: usize) -> Vec<Batch> {
    let mut batches = Vec::new();
    let mut current = Batch { tokens: Vec::new(), positions: Vec::new(), segments: Vec::new(), targets: Vec::new() };
    let mut segment = 0u32;
    for &i in order {
        let s = &samples[i];
        if !current.tokens.is_empty() && current.tokens.len() + s.tokens.len() > batch_tokens {
            batches.push(std::mem::replace(
                &mut current,
                Batch { tokens: Vec::new(), positions: Vec::new(), segments: Vec::new(), targets: Vec::new() },
            ));
            segment = 0;
        }
        let offset = current.tokens.len() as u32;
        current.tokens.extend_from_slice(&s.tokens);
        current.positions.extend(0..s.tokens.len() as u32);
        current.segments.extend(std::iter::repeat_n(segment, s.tokens.len()));
        // The token at `j` is predicted from the position before it.
        for j in s.prompt..s.tokens.len() {
            current.targets.push((offset + j as u32 - 1, s.tokens[j]));
        }
        segment += 1;
    }
    if !current.tokens.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_keeps_examples_whole_and_targets_the_answers() {
        let samples = vec![
            Sample { tokens: vec![1, 2, 3, 4], prompt: 2 },
            Sample { tokens: vec![5, 6, 7], prompt: 1 },
            Sample { tokens: vec![8, 9, 10, 11, 12], prompt: 3 },
        ];
        let batches = pack(&samples, &[0, 1, 2], 8);
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].tokens, [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(batches[0].positions, [0, 1, 2, 3, 0, 1, 2]);
        assert_eq!(batches[0].segments, [0, 0, 0, 0, 1, 1, 1]);
        assert_eq!(batches[0].targets, [(1, 3), (2, 4), (4, 6), (5, 7)]);
        assert_eq!(batches[1].targets, [(2, 11), (3, 12)]);
    }

    #[test]
    fn epoch_orders_are_seeded() {
        assert_eq!(epoch_order(50, 7, 1), epoch_order(50, 7, 1));
        assert_ne!(epoch_order(50, 7, 1), epoch_order(50, 7, 2));
        let mut sorted = epoch_order(50, 7, 3);
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }
}

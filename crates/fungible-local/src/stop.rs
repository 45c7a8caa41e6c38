//! Stop sequences over a token stream: text is released as soon as it can no longer be the
//! start of a stop sequence, and generation ends at the first complete one (which is not
//! part of the output, as OpenAI does).

#[derive(Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Bytes that did not form complete UTF-8 yet.
    pending_bytes: Vec<u8>,
    /// Decoded text not released yet.
    held: String,
}

/// What one step released.
#[derive(Debug, PartialEq, Eq)]
pub struct Step {
    pub text: String,
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending_bytes: Vec::new(),
            held: String::new(),
        }
    }

    /// Adds a token's bytes; returns the text that is now safe to send.
    pub fn push(&mut self, bytes: &[u8]) -> Step {
        self.pending_bytes.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending_bytes) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            // Invalid (not merely incomplete) bytes: replace them rather than wait forever.
            Err(_) => {
                let text = String::from_utf8_lossy(&self.pending_bytes).into_owned();
                self.pending_bytes.clear();
                self.held.push_str(&text);
                return self.release();
            }
        };
        let rest = self.pending_bytes.split_off(valid);
        let text = String::from_utf8(std::mem::replace(&mut self.pending_bytes, rest)).unwrap_or_default();
        self.held.push_str(&text);
        self.release()
    }

    fn release(&mut self) -> Step {
        // A complete stop sequence: cut there.
        let first = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(at) = first {
            let text = self.held[..at].to_owned();
            self.held.clear();
            return Step { text, stopped: true };
        }
        // Hold back the longest suffix that is a prefix of some stop sequence.
        let mut keep = 0;
        for stop in &self.stops {
            for (i, _) in stop.char_indices().skip(1) {
                if self.held.ends_with(&stop[..i]) {
                    keep = keep.max(i);
                }
            }
        }
        let cut = self.held.len() - keep;
        let text = self.held[..cut].to_owned();
        self.held.drain(..cut);
        Step { text, stopped: false }
    }

    /// The end of generation: whatever is still held is output.
    pub fn finish(&mut self) -> String {
        let mut text = std::mem::take(&mut self.held);
        text.push_str(&String::from_utf8_lossy(&std::mem::take(&mut self.pending_bytes)));
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_sequence_split_over_tokens_is_cut() {
        let mut m = StopMatcher::new(&["END".into()]);
        assert_eq!(m.push(b"hello E").text, "hello ");
        assert_eq!(m.push(b"N"), Step { text: String::new(), stopped: false });
        assert_eq!(m.push(b"D and more"), Step { text: String::new(), stopped: true });
    }

    #[test]
    fn false_start_is_released() {
        let mut m = StopMatcher::new(&["END".into()]);
        assert_eq!(m.push(b"E").text, "");
        assert_eq!(m.push(b"x").text, "Ex");
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn multibyte_characters_split_over_tokens_are_joined() {
        let mut m = StopMatcher::new(&[]);
        let bytes = "é".as_bytes();
        assert_eq!(m.push(&bytes[..1]).text, "");
        assert_eq!(m.push(&bytes[1..]).text, "é");
    }
}

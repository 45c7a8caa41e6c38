//! `PROVIDER/MODEL`: what a route resolves a model name to.

/// A provider and the provider's own model name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub provider: String,
    pub model: String,
}

impl Target {
    /// Splits `PROVIDER/MODEL` at the first `/` (the model part may contain more).
    pub fn parse(text: &str) -> Option<Target> {
        let (provider, model) = text.split_once('/')?;
        if provider.is_empty() || model.is_empty() {
            return None;
        }
        Some(Target { provider: provider.to_owned(), model: model.to_owned() })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.provider, self.model)
    }
}

//! Who is calling. The auth middleware puts a [`Principal`] on the request's extensions
//! when a virtual key authenticated the request; recording (the key column), limits and
//! budgets, the response cache (its scope), stored responses (their owner) and the read
//! endpoints (whose data) read it from there. No principal means auth is off, or the admin
//! key: nothing is scoped.

use fungible_store::Scope;

/// The virtual key a request authenticated with. Never holds the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's id (not secret; shown by `fungible keys list`).
    pub key_id: String,
    /// The key's display name, if it has one.
    pub key_name: Option<String>,
    /// The key's tags, recorded with each inference.
    pub tags: Vec<String>,
    /// What the key may do.
    pub scopes: Vec<Scope>,
}

impl Principal {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// Whose recorded data a caller may read and annotate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataScope {
    /// Every key's: auth off, the admin key, or a key with `read:all`.
    All,
    /// Only what this key made.
    Key(String),
}

impl DataScope {
    pub fn of(principal: Option<&Principal>) -> DataScope {
        match principal {
            Some(p) if !p.has(Scope::ReadAll) => DataScope::Key(p.key_id.clone()),
            _ => DataScope::All,
        }
    }

    /// The one key whose records are visible; `None`: every key's.
    pub fn key_id(&self) -> Option<&str> {
        match self {
            DataScope::All => None,
            DataScope::Key(own) => Some(own),
        }
    }

    /// Whether a record made by `key_id` (none: made without a key) is visible.
    pub fn sees(&self, key_id: Option<&str>) -> bool {
        match self {
            DataScope::All => true,
            DataScope::Key(own) => key_id == Some(own.as_str()),
        }
    }

    /// The scope of owned state (stored responses) for a caller: its own key always, even
    /// with `read:all` (which is for recorded data, not for continuing another key's
    /// conversations).
    pub fn owner_of(principal: Option<&Principal>) -> DataScope {
        match principal {
            Some(p) => DataScope::Key(p.key_id.clone()),
            None => DataScope::All,
        }
    }
}

/// The scope a path needs from a virtual key: the read endpoints need one of the read scopes
/// (checked by [`needs`]'s caller), the operational ones and datasets (which hold every
/// key's traffic) `read:all`, tuning jobs (which spend money) none: only the admin key,
/// everything else `inference`.
pub fn needs(path: &str) -> &'static [Scope] {
    if path == "/v1/tune" || path.starts_with("/v1/tune/") {
        // Tuning jobs spend money on the providers' accounts: the admin key only.
        &[]
    } else if path == "/metrics"
        || path == "/v1/routes"
        || path.starts_with("/v1/routes/")
        || path == "/v1/datasets"
        || path.starts_with("/v1/datasets/")
    {
        &[Scope::ReadAll]
    } else if path.starts_with("/v1/inferences") || path == "/v1/stats" || path == "/v1/stats/shadows" || path == "/v1/feedback" {
        &[Scope::ReadOwn, Scope::ReadAll]
    } else {
        &[Scope::Inference]
    }
}

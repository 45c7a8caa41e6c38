//! Who is calling. The auth middleware puts a [`Principal`] on the request's extensions
//! when a virtual key authenticated the request; recording (the key column), limits and
//! budgets, and the response cache (its scope) read it from there. No principal means auth
//! is off (or the route is open).

/// The virtual key a request authenticated with. Never holds the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's id (not secret; shown by `fungible keys list`).
    pub key_id: String,
    /// The key's display name, if it has one.
    pub key_name: Option<String>,
    /// The key's tags, recorded with each inference.
    pub tags: Vec<String>,
}

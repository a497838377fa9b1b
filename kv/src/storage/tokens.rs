//! etcd's simple tokens (`--auth-token=simple`): `<16 random letters>.<log index>`, assigned to
//! a user when the state machine applies an Authenticate, so every member that applied it
//! knows the token and a client that fails over keeps working. They live only in memory, each
//! expires after the TTL (`--auth-token-ttl`) without use and every use renews it, as etcd's.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::Rng;

/// etcd's default `--auth-token-ttl`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// etcd's `defaultSimpleTokenLength`.
const PREFIX_LETTERS: usize = 16;
const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

#[derive(Debug)]
struct Token {
    user: String,
    expires: Instant,
}

#[derive(Debug)]
struct Table {
    ttl: Duration,
    tokens: HashMap<String, Token>,
}

/// This member's simple tokens; clones share the table.
#[derive(Debug, Clone)]
pub struct SimpleTokens(Arc<Mutex<Table>>);

impl Default for SimpleTokens {
    fn default() -> Self {
        SimpleTokens::new(DEFAULT_TTL)
    }
}

impl SimpleTokens {
    pub fn new(ttl: Duration) -> Self {
        SimpleTokens(Arc::new(Mutex::new(Table {
            ttl,
            tokens: HashMap::new(),
        })))
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A fresh random prefix, chosen by the member that checked the password.
    pub fn prefix() -> String {
        let mut rng = rand::rngs::OsRng;
        (0..PREFIX_LETTERS)
            .map(|_| char::from(LETTERS[rng.gen_range(0..LETTERS.len())]))
            .collect()
    }

    /// The token for `prefix` assigned at log `index`.
    pub fn token(prefix: &str, index: u64) -> String {
        format!("{prefix}.{index}")
    }

    /// The log index a token was assigned at, if it has the shape of one.
    pub fn index_of(token: &str) -> Option<u64> {
        let (_, index) = token.split_once('.')?;
        index.parse().ok()
    }

    /// Assigns `token` to `user`, dropping the tokens that expired meanwhile.
    pub fn assign(&self, token: String, user: String) {
        let now = Instant::now();
        let mut table = self.table();
        table.tokens.retain(|_, t| t.expires > now);
        let expires = now + table.ttl;
        table.tokens.insert(token, Token { user, expires });
    }

    /// The user of a live token, whose life starts over with this use.
    pub fn user_of(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let mut table = self.table();
        let ttl = table.ttl;
        let live = table.tokens.get_mut(token).filter(|t| t.expires > now);
        let Some(live) = live else {
            table.tokens.remove(token);
            return None;
        };
        live.expires = now + ttl;
        Some(live.user.clone())
    }

    /// Forgets a user's tokens (deleted, or its password changed).
    pub fn invalidate_user(&self, user: &str) {
        self.table().tokens.retain(|_, t| t.user != user);
    }

    /// Forgets every token (auth disabled).
    pub fn clear(&self) {
        self.table().tokens.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_user_until_it_expires_unused() {
        let tokens = SimpleTokens::new(Duration::from_millis(50));
        let token = SimpleTokens::token(&SimpleTokens::prefix(), 42);
        assert_eq!(SimpleTokens::index_of(&token), Some(42));
        tokens.assign(token.clone(), "alice".to_string());
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(tokens.user_of(&token).as_deref(), Some("alice"));
        // The use above renewed it.
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(tokens.user_of(&token).as_deref(), Some("alice"));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(tokens.user_of(&token), None);
    }

    #[test]
    fn deleting_a_user_or_disabling_auth_forgets_tokens() {
        let tokens = SimpleTokens::default();
        tokens.assign("a.1".to_string(), "alice".to_string());
        tokens.assign("b.2".to_string(), "bob".to_string());
        tokens.invalidate_user("alice");
        assert_eq!(tokens.user_of("a.1"), None);
        assert_eq!(tokens.user_of("b.2").as_deref(), Some("bob"));
        tokens.clear();
        assert_eq!(tokens.user_of("b.2"), None);
        assert_eq!(SimpleTokens::index_of("no-index"), None);
    }
}

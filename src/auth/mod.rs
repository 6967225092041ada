//! Authentication and authorization: JWT tokens, password hashing, the `Principal` a request acts as,
//! and the one permission check every transport goes through.

pub mod action;
pub mod credential_cache;
pub mod jwt;
pub mod password;
pub mod principal;
pub mod throttle;

pub use action::{Action, ActionSet};
pub use principal::{IdSet, Principal};

//! Authentication: accounts and credentials ([`accounts`]), name and password
//! rules ([`names`]), access tokens ([`tokens`]) and rate limits
//! ([`ratelimit`]). No HTTP here; `api::auth` maps these to routes.

pub mod accounts;
pub mod names;
pub mod ratelimit;
pub mod tokens;

//! Tokens: login, refresh, create (§4.5, §6.2) and turning a presented access token into a `Principal`.

use std::net::IpAddr;

use serde_json::{json, Value};

use super::fields::Fields;
use super::Hub;
use crate::auth::action::{id_by_name, CLIENT_ACTIONS};
use crate::auth::jwt::{TokenError, TokenPayload, TYPE_ACCESS, TYPE_REFRESH};
use crate::auth::{password, Action, ActionSet, IdSet, Principal};
use crate::error::{ApiError, Result};
use crate::model::User;
use crate::time::now_ms;

const DEFAULT_MAX_LOGIN_ATTEMPTS: i64 = 10;
const DEFAULT_LAST_LOGIN_TIMEOUT_MS: i64 = 1000;

/// An Argon2 hash no password matches by chance, checked for unknown logins so they cost the same.
static DUMMY_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| password::hash("no user has this password").0);

impl Hub {
    /// Validates an access token and loads its user (§4.4). Errors carry the REST messages; the
    /// WebSocket transport maps them to its own.
    pub async fn principal_from_token(&self, token: &str) -> std::result::Result<Principal, TokenError> {
        let payload = self
            .keys
            .verify(token, TYPE_ACCESS, now_ms())
            .inspect_err(|_| crate::metrics::auth_failure(crate::metrics::Credential::Token))?;
        let user_id = payload.u.ok_or(TokenError::Invalid)?;
        let user = match self.store.user_get(user_id).await {
            Ok(Some(u)) if u.is_active() => u,
            Ok(_) => return Err(TokenError::Invalid),
            Err(_) => return Err(TokenError::Unavailable),
        };
        Principal::from_token(&payload, user).map_err(|_| TokenError::Invalid)
    }

    /// The REST view of a bad token: expired → `Token expired`, anything else → `Unauthorized`.
    pub fn token_error_to_rest(e: TokenError) -> ApiError {
        match e {
            TokenError::Expired => ApiError::unauthorized_msg("Token expired"),
            TokenError::Unavailable => ApiError::database_unavailable(),
            _ => ApiError::unauthorized(),
        }
    }

    /// `POST /token` and WebSocket `token`: password login. Non-string values are a failed login.
    pub async fn login(&self, body: &Value, peer: Option<IpAddr>) -> Result<Value> {
        let f = Fields::of(body)?;
        let text = |key: &str| match f.0.get(key) {
            None | Some(Value::Null) => Ok(""),
            Some(Value::String(s)) => Ok(s.as_str()),
            Some(_) => Err(()),
        };
        let user = match (text("login"), text("password")) {
            (Ok(login), Ok(pass)) => {
                if login.trim().is_empty() || pass.is_empty() {
                    return Err(ApiError::bad_request("Invalid or empty authorization request parameters"));
                }
                self.check_password(login.trim(), Some(pass), peer).await?
            }
            (login, _) => self.check_password(login.unwrap_or("").trim(), None, peer).await?,
        };
        let payload = self.login_payload(&user).await?;
        Ok(self.token_pair(payload, None, None))
    }

    /// The principal of a login/password pair (MQTT CONNECT): the rights a login token would carry,
    /// without a JWT round trip.
    pub async fn password_principal(&self, login: &str, password: &str, peer: Option<IpAddr>) -> Result<Principal> {
        let user = self.check_password(login.trim(), Some(password), peer).await?;
        let payload = self.login_payload(&user).await?;
        Principal::from_token(&payload, user)
    }

    /// Checks a password login, throttled per login and per source address, counting failures towards
    /// the account lockout. `password: None` is a malformed attempt (a failure). Every refusal of a
    /// credential answers the same 401 "Invalid credentials", and unknown logins cost the same hash
    /// as known ones, so neither the message nor the timing tells unknown, wrong and locked apart.
    async fn check_password(&self, login: &str, password: Option<&str>, peer: Option<IpAddr>) -> Result<User> {
        let invalid = || ApiError::unauthorized_msg("Invalid credentials");
        let mut keys = vec![format!("login:{login}")];
        if let Some(ip) = peer {
            keys.push(format!("ip:{ip}"));
        }
        if let Err(wait) = self.login_throttle.check(&keys) {
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                format!("Too many failed login attempts; retry in {} s", wait.as_secs().max(1)),
            ));
        }
        let user = if login.is_empty() { None } else { self.store.user_by_login(login).await? };
        let verified = match (&user, password) {
            (Some(u), Some(pass)) => {
                self.credentials.verified(login, pass, u) || password::verify(pass, &u.password_hash, &u.password_salt)
            }
            (None, Some(pass)) => {
                // Same cost as a real check: the answer's timing does not reveal unknown logins.
                password::verify(pass, &DUMMY_HASH, "");
                false
            }
            (_, None) => false,
        };
        let Some(mut user) = user else {
            self.login_throttle.failed(&keys);
            return Err(invalid());
        };
        if !user.is_active() {
            if !verified {
                self.login_throttle.failed(&keys);
            }
            return Err(invalid());
        }
        if !verified {
            self.login_throttle.failed(&keys);
            let max = self.store.config_i64("user.login.maxAttempts", DEFAULT_MAX_LOGIN_ATTEMPTS).await?;
            let lockout = self.settings.auth.lockout_secs;
            let lock_until = (lockout > 0).then(|| now_ms() + lockout as i64 * 1000);
            self.store.user_login_failed(user.id, max.max(1), lock_until).await?;
            return Err(invalid());
        }
        if let Some(pass) = password {
            password::upgrade_legacy(&self.store, &mut user, pass).await;
            self.credentials.remember(login, pass, &user);
        }
        self.login_throttle.succeeded(&keys[0]);
        let gap = self.store.config_i64("user.login.lastTimeout", DEFAULT_LAST_LOGIN_TIMEOUT_MS).await?;
        let now = now_ms();
        // Most logins change nothing (no failed attempts to reset, lastLogin recently set): skip the
        // write, also when many logins of one user race (a fleet of devices sharing credentials).
        if user.login_attempts != 0
            || user.locked_until.is_some()
            || self.last_login_due(user.id, user.last_login, now, gap)
        {
            self.store.user_login_succeeded(user.id, now, gap).await?;
        }
        Ok(user)
    }

    /// Whether `lastLogin` needs writing: neither the stored value nor this process's last write is
    /// within `gap`. Records the write it allows.
    fn last_login_due(&self, user_id: i64, stored: Option<i64>, now: i64, gap: i64) -> bool {
        let mut recent = self.recent_last_login.lock().unwrap_or_else(|e| e.into_inner());
        let last = stored.into_iter().chain(recent.get(&user_id).copied()).max();
        if last.is_some_and(|l| now - l < gap) {
            return false;
        }
        if recent.len() > 100_000 {
            recent.clear();
        }
        recent.insert(user_id, now);
        true
    }

    /// Claims of a login token: admins everything; clients the client actions, their networks and
    /// device types.
    async fn login_payload(&self, user: &User) -> Result<TokenPayload> {
        let (a, n, dt) = if user.is_admin() {
            (vec![json!(0)], vec![json!("*")], vec![json!("*")])
        } else {
            let networks = self.store.user_network_ids(user.id).await?;
            let types = if user.all_device_types_available {
                vec![json!("*")]
            } else {
                self.store.user_device_types(user.id).await?.iter().map(|t| json!(t.id.to_string())).collect()
            };
            (
                CLIENT_ACTIONS.iter().map(|i| json!(i)).collect(),
                networks.iter().map(|i| json!(i.to_string())).collect(),
                types,
            )
        };
        Ok(TokenPayload { u: Some(user.id), a: Some(a), n: Some(n), dt: Some(dt), e: None, t: None, tpc: None })
    }

    fn token_pair(&self, payload: TokenPayload, access_exp: Option<i64>, refresh_exp: Option<i64>) -> Value {
        let now = now_ms();
        let access = TokenPayload {
            e: Some(access_exp.unwrap_or(now + self.settings.auth.access_token_lifetime_ms)),
            t: Some(TYPE_ACCESS),
            ..payload.clone()
        };
        let refresh = TokenPayload {
            e: Some(refresh_exp.or(access_exp).unwrap_or(now + self.settings.auth.refresh_token_lifetime_ms)),
            t: Some(TYPE_REFRESH),
            ..payload
        };
        json!({"accessToken": self.keys.sign(&access), "refreshToken": self.keys.sign(&refresh)})
    }

    /// `POST /token/refresh`: a new access token. Its claims are the refresh token's, cut down to what
    /// the user holds *now*: a user demoted to client gets client rights, its current networks and
    /// device types, whatever the refresh token once said.
    pub async fn refresh(&self, body: &Value) -> Result<Value> {
        let f = Fields::of(body)?;
        let token = f.str("refreshToken")?.ok_or_else(ApiError::invalid_params)?;
        let payload = match self.keys.verify(token, TYPE_REFRESH, now_ms()) {
            Ok(p) => p,
            Err(TokenError::WrongType) => return Err(ApiError::unauthorized_msg("Invalid token type")),
            Err(TokenError::Expired) => return Err(ApiError::unauthorized_msg("Token has expired")),
            Err(TokenError::Invalid | TokenError::Unavailable) => return Err(ApiError::unauthorized()),
        };
        let user_id = payload.u.ok_or_else(ApiError::unauthorized)?;
        let user = match self.store.user_get(user_id).await? {
            Some(u) if u.is_active() => u,
            _ => return Err(ApiError::unauthorized()),
        };
        let gap = self.store.config_i64("user.login.lastTimeout", DEFAULT_LAST_LOGIN_TIMEOUT_MS).await?;
        self.store.user_touch_last_login(user.id, now_ms(), gap).await?;
        let claims = self.current_claims(&user, payload).await?;
        let access = TokenPayload {
            e: Some(now_ms() + self.settings.auth.access_token_lifetime_ms),
            t: Some(TYPE_ACCESS),
            ..claims
        };
        Ok(json!({"accessToken": self.keys.sign(&access)}))
    }

    /// A token's claims limited to the user's current role and assignments (administrators keep
    /// them as they are).
    async fn current_claims(&self, user: &User, payload: TokenPayload) -> Result<TokenPayload> {
        if user.is_admin() {
            return Ok(payload);
        }
        let now = self.login_payload(user).await?;
        let ids = payload.action_ids().ok_or_else(ApiError::unauthorized)?;
        let a = if ids.contains(&0) { now.a.clone() } else { payload.a.clone() };
        let limit = |claim: &Option<Vec<Value>>, current: &Option<Vec<Value>>| {
            let allowed = IdSet::from_claim(current.as_ref());
            claim.as_ref().map(|c| IdSet::from_claim(Some(c)).intersect(&allowed).to_claim())
        };
        Ok(TokenPayload { a, n: limit(&payload.n, &now.n), dt: limit(&payload.dt, &now.dt), ..payload })
    }

    /// `POST /token/create`: a token pair with the requested claims. With `restrict_token_create`
    /// (default) anyone but a full administrator token may only mint tokens for itself within its own
    /// rights (pitfall P12).
    pub async fn create_token(&self, principal: &Principal, body: &Value) -> Result<Value> {
        let caller = principal.require(Action::ManageToken)?;
        let f = Fields::of(body)?;
        let user_id = f.i64("userId")?.ok_or_else(ApiError::invalid_params)?;
        let actions: Vec<Value> = match f.nested("actions") {
            None => vec![json!(1)],
            Some(Value::Array(items)) => {
                let mut ids = Vec::new();
                for item in items {
                    match item {
                        Value::String(s) => {
                            if let Some(id) = id_by_name(s.trim()) {
                                ids.push(json!(id));
                            }
                        }
                        Value::Number(n) if n.as_i64().is_some() => ids.push(json!(n.as_i64())),
                        _ => return Err(ApiError::bad_request("Actions list should contain only Strings or Integers")),
                    }
                }
                ids
            }
            Some(_) => return Err(ApiError::bad_request("Actions list should contain only Strings or Integers")),
        };
        let id_claim = |key: &str| -> Result<Option<Vec<Value>>> {
            match f.nested(key) {
                None => Ok(None),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => Ok(json!(s.trim())),
                        Value::Number(n) => Ok(json!(n.to_string())),
                        _ => Err(ApiError::invalid_params()),
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Some),
                Some(_) => Err(ApiError::invalid_params()),
            }
        };
        let n = id_claim("networkIds")?;
        let dt = id_claim("deviceTypeIds")?;
        let expiration = f.timestamp("expiration")?;
        let refresh_expiration = f.timestamp("refreshExpiration")?;

        let target = self.store.user_get(user_id).await?.ok_or_else(|| ApiError::user_not_found(user_id))?;
        if !target.is_active() {
            return Err(ApiError::forbidden("User is locked or disabled"));
        }
        let payload = TokenPayload { u: Some(user_id), a: Some(actions), n, dt, e: None, t: None, tpc: None };
        // Only a full administrator token is exempt: an admin user holding a token limited to some
        // actions or networks must not be able to mint itself an unlimited one.
        let full_admin = caller.is_admin()
            && principal.actions.is_admin_set()
            && principal.networks.is_all()
            && principal.device_types.is_all();
        // A client-role user never mints beyond its own rights, whatever the setting says.
        if (self.settings.auth.restrict_token_create || !caller.is_admin()) && !full_admin {
            self.check_within_own_rights(principal, caller, &payload, expiration, refresh_expiration)?;
        }
        Ok(self.token_pair(payload, expiration, refresh_expiration))
    }

    fn check_within_own_rights(
        &self,
        principal: &Principal,
        caller: &User,
        payload: &TokenPayload,
        expiration: Option<i64>,
        refresh_expiration: Option<i64>,
    ) -> Result<()> {
        if payload.u != Some(caller.id) {
            return Err(ApiError::access_denied());
        }
        let ids = payload.action_ids().ok_or_else(ApiError::invalid_params)?;
        let requested = ActionSet::from_claim(&ids).ok_or_else(ApiError::invalid_params)?;
        let networks = IdSet::from_claim(payload.n.as_ref());
        let device_types = match payload.dt.as_ref() {
            None => principal.device_types.clone(),
            Some(dt) => IdSet::from_claim(Some(dt)),
        };
        let within = requested.is_subset_of(&principal.actions)
            && networks.is_subset_of(&principal.networks)
            && device_types.is_subset_of(&principal.device_types);
        // Neither token of the pair may outlive the refresh lifetime.
        let latest = now_ms() + self.settings.auth.refresh_token_lifetime_ms;
        let lifetime_ok = expiration.is_none_or(|e| e <= latest) && refresh_expiration.is_none_or(|e| e <= latest);
        if within && lifetime_ok {
            Ok(())
        } else {
            Err(ApiError::access_denied())
        }
    }
}

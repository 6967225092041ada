//! `hivehub token create`: an access token for a user, signed with the database's JWT secret and with
//! the claims `POST /token/create` gives (e.g. a device's MQTT password).

use clap::Subcommand;
use serde_json::json;

use super::{api, CliError, ConfigArg, Context};
use crate::auth::action::id_by_name;

#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Print an access token for a user (the token is the only thing on stdout).
    Create {
        #[arg(long)]
        login: String,
        /// Actions by name (GetDevice, CreateDeviceNotification, ...), comma-separated; `*` (the
        /// default) is everything the user's role allows.
        #[arg(long, value_delimiter = ',', default_value = "*")]
        actions: Vec<String>,
        /// Network ids, comma-separated; `*` (the default) is every network the user is assigned to.
        #[arg(long, value_delimiter = ',', default_value = "*")]
        networks: Vec<String>,
        /// Device type ids, comma-separated, or `*`. Default: the user's device types.
        #[arg(long, value_delimiter = ',')]
        device_types: Option<Vec<String>>,
        /// Lifetime: a number with a unit s, m, h or d (`30d`). Default: `[auth]
        /// access_token_lifetime_ms`.
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<i64>,
    },
}

pub async fn token(args: TokenArgs) -> Result<(), CliError> {
    let TokenCommand::Create { login, actions, networks, device_types, ttl } = args.command;
    // Arguments first: a typo fails before the database is touched.
    let actions = action_ids(&actions)?;
    let networks = ids(&networks, "--networks")?;
    let device_types = device_types.as_deref().map(|d| ids(d, "--device-types")).transpose()?;
    let cx = Context::open(&args.config).await?;
    let result = async {
        let user = cx.user_by_login(&login).await?;
        let mut body = json!({"userId": user["id"], "actions": actions, "networkIds": networks});
        if let Some(dt) = device_types {
            body["deviceTypeIds"] = json!(dt);
        }
        if let Some(ms) = ttl {
            body["expiration"] = json!(crate::time::format_ms(crate::time::now_ms() + ms));
        }
        let pair = cx.hub.create_token(&cx.operator, &body).await.map_err(api)?;
        println!("{}", pair["accessToken"].as_str().unwrap_or_default());
        Ok(())
    }
    .await;
    cx.close().await;
    result
}

/// Action names as the ids a token claim holds; unknown names are an error (not skipped, as REST does).
fn action_ids(names: &[String]) -> Result<Vec<i64>, CliError> {
    names
        .iter()
        .filter(|n| !n.trim().is_empty())
        .map(|n| id_by_name(n.trim()).map(i64::from).ok_or_else(|| CliError(format!("unknown action `{}`", n.trim()))))
        .collect()
}

/// `*` or numeric ids.
fn ids(items: &[String], flag: &str) -> Result<Vec<String>, CliError> {
    items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| match s == "*" || s.parse::<i64>().is_ok() {
            true => Ok(s.to_string()),
            false => Err(CliError(format!("{flag}: `{s}` is not an id or `*`"))),
        })
        .collect()
}

/// `30d`, `12h`, `15m`, `90s` or plain seconds, as milliseconds.
fn parse_ttl(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let seconds_per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{text}`: use a number with a unit s, m, h or d, e.g. 30d")),
    };
    match number.parse::<i64>() {
        Ok(n) if n > 0 => n.checked_mul(seconds_per * 1000).ok_or_else(|| format!("`{text}` is too long")),
        _ => Err(format!("`{text}`: use a positive number with a unit s, m, h or d, e.g. 30d")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ttls_take_a_unit_and_refuse_nonsense() {
        assert_eq!(super::parse_ttl("30d"), Ok(30 * 86_400_000));
        assert_eq!(super::parse_ttl("90"), Ok(90_000));
        assert_eq!(super::parse_ttl("2h"), Ok(7_200_000));
        for bad in ["", "0d", "d", "3w", "-1h", "1.5h", "99999999999999999d"] {
            assert!(super::parse_ttl(bad).is_err(), "{bad}");
        }
    }
}

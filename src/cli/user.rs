//! `hivehub user add|passwd|lock|unlock|list` and `hivehub admin reset-password`: user accounts,
//! changed through the same service calls (and so the same login and password rules) as the REST API.

use clap::{Subcommand, ValueEnum};
use serde_json::{json, Value};

use super::{api, password_input, CliError, ConfigArg, Context};
use crate::auth::password;
use crate::model::{ROLE_ADMIN, ROLE_CLIENT, STATUS_ACTIVE, STATUS_LOCKED_OUT};

#[derive(clap::Args, Debug)]
pub struct UserArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(subcommand)]
    pub command: UserCommand,
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user. Without --password a strong one is generated and printed once.
    Add {
        #[arg(long)]
        login: String,
        /// The password (6 to 128 characters). Note that it may stay in the shell history.
        #[arg(long)]
        password: Option<String>,
        #[arg(long, value_enum, default_value_t = Role::Client)]
        role: Role,
    },
    /// Set a user's password: --password P, --generate (printed once), or read from the terminal
    /// (asked twice) or from the first line of stdin. The old password stops working at once.
    Passwd {
        #[arg(long)]
        login: String,
        #[arg(long, conflicts_with = "generate")]
        password: Option<String>,
        /// Generate a strong password and print it once.
        #[arg(long)]
        generate: bool,
    },
    /// Lock a user out until unlocked: logins and tokens are refused, live sessions closed.
    Lock {
        #[arg(long)]
        login: String,
    },
    /// Make a locked (or locked-out) user active again.
    Unlock {
        #[arg(long)]
        login: String,
    },
    /// List every user: id, login, role, status, last login.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Client,
}

#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Give an administrator a new generated password, printed once, and make it active again (a
    /// lost administrator password is recovered this way: HIVEHUB__AUTH__ADMIN_PASSWORD only applies
    /// to a new database). The old password stops working at once.
    #[command(name = "reset-password")]
    ResetPassword {
        /// Default: `[auth] admin_login` of the configuration (dhadmin).
        #[arg(long)]
        login: Option<String>,
    },
}

pub async fn user(args: UserArgs) -> Result<(), CliError> {
    let cx = Context::open(&args.config).await?;
    let result = match args.command {
        UserCommand::Add { login, password, role } => add(&cx, &login, password, role).await,
        UserCommand::Passwd { login, password, generate } => {
            let (password, generated) = match (password, generate) {
                (Some(p), _) => (p, false),
                (None, true) => (password::generate(), true),
                (None, false) => (password_input::read_new_password()?, false),
            };
            set_password(&cx, &login, &password, false).await.map(|login| {
                match generated {
                    true => println!("password of {login} changed: password={password}"),
                    false => println!("password of {login} changed"),
                };
            })
        }
        UserCommand::Lock { login } => set_status(&cx, &login, STATUS_LOCKED_OUT).await,
        UserCommand::Unlock { login } => set_status(&cx, &login, STATUS_ACTIVE).await,
        UserCommand::List { json } => list(&cx, json).await,
    };
    cx.close().await;
    result
}

pub async fn admin(args: AdminArgs) -> Result<(), CliError> {
    let cx = Context::open(&args.config).await?;
    let AdminCommand::ResetPassword { login } = args.command;
    let login = login.unwrap_or_else(|| cx.settings.auth.admin_login.clone());
    let password = password::generate();
    let result = set_password(&cx, &login, &password, true)
        .await
        .map(|login| println!("new password of {login} (shown only now): password={password}"));
    cx.close().await;
    result
}

async fn add(cx: &Context, login: &str, password: Option<String>, role: Role) -> Result<(), CliError> {
    let (password, generated) = match password {
        Some(p) => (p, false),
        None => (password::generate(), true),
    };
    let role_id = match role {
        Role::Admin => ROLE_ADMIN,
        Role::Client => ROLE_CLIENT,
    };
    let body = json!({"login": login, "password": password, "role": role_id});
    let user = cx.hub.user_insert(&cx.operator, &body).await.map_err(api)?;
    let role = if role_id == ROLE_ADMIN { "admin" } else { "client" };
    match generated {
        true => println!("created user {} (id {}, {role}): password={password}", user.login, user.id),
        false => println!("created user {} (id {}, {role})", user.login, user.id),
    }
    Ok(())
}

/// Sets the password (and with `reactivate` the status active) of `login`; returns the login.
async fn set_password(cx: &Context, login: &str, password: &str, reactivate: bool) -> Result<String, CliError> {
    let user = cx.user_by_login(login).await?;
    let id = user_id(&user);
    if reactivate && user["role"] != json!(ROLE_ADMIN) {
        return Err(CliError(format!("`{}` is not an administrator (use `hivehub user passwd`)", user["login"])));
    }
    let mut body = json!({"password": password});
    if reactivate {
        body["status"] = json!(STATUS_ACTIVE);
    }
    cx.hub.user_update(&cx.operator, id, &body).await.map_err(api)?;
    cx.announce_user_rights(id).await?;
    Ok(user["login"].as_str().unwrap_or(login).to_string())
}

async fn set_status(cx: &Context, login: &str, status: i64) -> Result<(), CliError> {
    let user = cx.user_by_login(login).await?;
    let id = user_id(&user);
    cx.hub.user_update(&cx.operator, id, &json!({"status": status})).await.map_err(api)?;
    if status != STATUS_ACTIVE {
        cx.announce_user_rights(id).await?;
    }
    let done = if status == STATUS_ACTIVE { "unlocked" } else { "locked" };
    println!("{done} user {} (id {id})", user["login"].as_str().unwrap_or(login));
    Ok(())
}

async fn list(cx: &Context, as_json: bool) -> Result<(), CliError> {
    let page = cx.hub.max_take();
    let mut users: Vec<Value> = Vec::new();
    loop {
        let query = json!({"sortField": "id", "take": page, "skip": users.len()});
        let batch = cx.hub.user_list(&cx.operator, &query).await.map_err(api)?;
        let done = (batch.len() as i64) < page;
        users.extend(batch);
        if done {
            break;
        }
    }
    if as_json {
        println!("{}", Value::Array(users));
        return Ok(());
    }
    println!("{:>6}  {:<32} {:<7} {:<10} LAST LOGIN", "ID", "LOGIN", "ROLE", "STATUS");
    for u in &users {
        let role = if u["role"] == json!(ROLE_ADMIN) { "admin" } else { "client" };
        let status = match u["status"].as_i64() {
            Some(STATUS_ACTIVE) => "active",
            Some(STATUS_LOCKED_OUT) => "locked",
            _ => "disabled",
        };
        let last = u["lastLogin"].as_str().unwrap_or("-");
        println!("{:>6}  {:<32} {role:<7} {status:<10} {last}", user_id(u), u["login"].as_str().unwrap_or(""));
    }
    Ok(())
}

fn user_id(user: &Value) -> i64 {
    user["id"].as_i64().unwrap_or_default()
}

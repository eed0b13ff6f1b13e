//! `runnel user`, `runnel acl`, `runnel quota`, `runnel token` and `runnel whoami`: who may use
//! a cluster, and how much (docs/SECURITY.md).

use std::io::BufRead;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use runnel_client::v1;
use serde_json::json;

use crate::output::{print, print_json, table};
use crate::{ClientOpts, OutputFormat};

#[derive(Debug, Args)]
pub struct UserArgs {
    #[command(flatten)]
    pub client: ClientOpts,
    #[command(subcommand)]
    pub command: UserCommand,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user, or set a new password for one (which revokes its tokens).
    ///
    /// Only salted SCRAM-SHA-256/512 credentials derived here reach the cluster, never the
    /// password.
    Create {
        name: String,
        /// The user's password (visible in the process list; prefer --password-stdin). Not
        /// `--password`: that is the password of whoever runs the command.
        #[arg(long, conflicts_with = "password_stdin")]
        new_password: Option<String>,
        /// Read the user's password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete a user; its tokens stop working at once.
    Delete { name: String },
    /// Users and their SCRAM mechanisms.
    List,
}

#[derive(Debug, Args)]
pub struct AclArgs {
    #[command(flatten)]
    pub client: ClientOpts,
    #[command(subcommand)]
    pub command: AclCommand,
}

/// Which resources a rule covers.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct ResourceOpts {
    /// A topic name (or prefix with --prefixed; `*` for every topic).
    #[arg(long)]
    pub topic: Option<String>,
    /// A consumer group name (or prefix).
    #[arg(long)]
    pub group: Option<String>,
    /// A queue name (or prefix).
    #[arg(long)]
    pub queue: Option<String>,
    /// An exchange name (or prefix).
    #[arg(long)]
    pub exchange: Option<String>,
    /// The cluster itself (for admin, describe and create).
    #[arg(long)]
    pub cluster: bool,
}

impl ResourceOpts {
    fn resolve(&self) -> (&'static str, String) {
        match (&self.topic, &self.group, &self.queue, &self.exchange) {
            (Some(t), ..) => ("topic", t.clone()),
            (_, Some(g), ..) => ("group", g.clone()),
            (_, _, Some(q), _) => ("queue", q.clone()),
            (_, _, _, Some(e)) => ("exchange", e.clone()),
            _ => ("cluster", "cluster".to_string()),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct RuleOpts {
    /// Whom the rule is for: User:<name>, or User:* for every authenticated user.
    #[arg(long)]
    pub principal: String,
    /// read, write, create, delete, alter, describe, admin or all (repeatable).
    #[arg(long = "operation", required = true)]
    pub operations: Vec<String>,
    #[command(flatten)]
    pub resource: ResourceOpts,
    /// The name is a prefix: the rule covers every name that starts with it.
    #[arg(long)]
    pub prefixed: bool,
    /// A deny rule (deny wins over any allow).
    #[arg(long)]
    pub deny: bool,
}

impl RuleOpts {
    fn rules(&self) -> Vec<v1::AclRule> {
        let (resource_type, name) = self.resource.resolve();
        self.operations
            .iter()
            .map(|op| v1::AclRule {
                principal: self.principal.clone(),
                permission: if self.deny { "deny" } else { "allow" }.into(),
                operation: op.clone(),
                resource_type: resource_type.into(),
                pattern_type: if self.prefixed { "prefixed" } else { "literal" }.into(),
                name: name.clone(),
            })
            .collect()
    }
}

#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Allow (or with --deny, deny) operations on resources to a principal.
    Add(RuleOpts),
    /// Remove rules exactly as they were added.
    Remove(RuleOpts),
    /// The rules, optionally only a principal's or a resource's.
    List {
        #[arg(long)]
        principal: Option<String>,
        /// topic, group, queue, exchange or cluster.
        #[arg(long)]
        resource_type: Option<String>,
        /// The rule's resource name (or prefix) exactly.
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct QuotaArgs {
    #[command(flatten)]
    pub client: ClientOpts,
    #[command(subcommand)]
    pub command: QuotaCommand,
}

#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Set a principal's limits, per node (unset limits are unlimited).
    Set {
        /// User:<name>, or User:* for users without their own quota.
        #[arg(long)]
        principal: String,
        #[arg(long)]
        produce_bytes_per_sec: Option<u64>,
        #[arg(long)]
        fetch_bytes_per_sec: Option<u64>,
        #[arg(long)]
        requests_per_sec: Option<u64>,
    },
    /// Remove a principal's quota.
    Remove {
        #[arg(long)]
        principal: String,
    },
    List,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub client: ClientOpts,
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a bearer token (for RUNNEL_TOKEN / --token, or a service's configuration).
    Create {
        /// The user it is for (default: the user running the command; another user needs the
        /// admin operation on the cluster).
        #[arg(long)]
        user: Option<String>,
        /// How long it stays valid (default: the node's token_lifetime_secs; at most 30 days).
        #[arg(long)]
        lifetime_secs: Option<u64>,
    },
}

#[derive(Debug, Args)]
pub struct WhoAmIArgs {
    #[command(flatten)]
    pub client: ClientOpts,
}

fn read_password(password: Option<String>, stdin: bool) -> anyhow::Result<String> {
    if let Some(p) = password {
        return Ok(p);
    }
    anyhow::ensure!(stdin, "give the new user's password with --password-stdin (or --new-password)");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("reading the password from stdin")?;
    let p = line.trim_end_matches(['\n', '\r']).to_string();
    anyhow::ensure!(!p.is_empty(), "the password read from stdin is empty");
    Ok(p)
}

pub async fn user(args: UserArgs) -> anyhow::Result<()> {
    let out = args.client.output;
    match args.command {
        UserCommand::Create { name, new_password, password_stdin } => {
            let password = read_password(new_password, password_stdin)?;
            let client = args.client.connect().await?;
            client.put_user(&name, &password).await?;
            match out {
                OutputFormat::Json => print_json(&json!({ "user": name, "created": true })),
                OutputFormat::Text => print(&format!("user '{name}' created (or its password changed)\n")),
            }
        }
        UserCommand::Delete { name } => {
            args.client.connect().await?.delete_user(&name).await?;
            match out {
                OutputFormat::Json => print_json(&json!({ "user": name, "deleted": true })),
                OutputFormat::Text => print(&format!("user '{name}' deleted\n")),
            }
        }
        UserCommand::List => {
            let users = args.client.connect().await?.list_users().await?;
            match out {
                OutputFormat::Json => print_json(&json!(users
                    .iter()
                    .map(|u| json!({ "name": u.name, "mechanisms": u.mechanisms }))
                    .collect::<Vec<_>>())),
                OutputFormat::Text => print(&table(
                    &["USER", "MECHANISMS"],
                    &users.iter().map(|u| vec![u.name.clone(), u.mechanisms.join(",")]).collect::<Vec<_>>(),
                )),
            }
        }
    }
}

fn rule_json(r: &v1::AclRule) -> serde_json::Value {
    json!({
        "principal": r.principal,
        "permission": r.permission,
        "operation": r.operation,
        "resource_type": r.resource_type,
        "pattern_type": r.pattern_type,
        "name": r.name,
    })
}

pub async fn acl(args: AclArgs) -> anyhow::Result<()> {
    let out = args.client.output;
    let client = args.client.connect().await?;
    match args.command {
        AclCommand::Add(opts) => {
            let rules = opts.rules();
            client.add_acls(rules.clone()).await?;
            match out {
                OutputFormat::Json => print_json(&json!({ "added": rules.iter().map(rule_json).collect::<Vec<_>>() })),
                OutputFormat::Text => print(&format!("{} rule(s) added\n", rules.len())),
            }
        }
        AclCommand::Remove(opts) => {
            let removed = client.remove_acls(opts.rules()).await?;
            match out {
                OutputFormat::Json => print_json(&json!({ "removed": removed })),
                OutputFormat::Text => print(&format!("{removed} rule(s) removed\n")),
            }
        }
        AclCommand::List { principal, resource_type, name } => {
            let filter = v1::ListAclsRequest {
                principal: principal.unwrap_or_default(),
                resource_type: resource_type.unwrap_or_default(),
                name: name.unwrap_or_default(),
            };
            let rules = client.list_acls(filter).await?;
            match out {
                OutputFormat::Json => print_json(&json!(rules.iter().map(rule_json).collect::<Vec<_>>())),
                OutputFormat::Text => print(&table(
                    &["PRINCIPAL", "PERMISSION", "OPERATION", "RESOURCE", "PATTERN", "NAME"],
                    &rules
                        .iter()
                        .map(|r| {
                            vec![
                                r.principal.clone(),
                                r.permission.clone(),
                                r.operation.clone(),
                                r.resource_type.clone(),
                                r.pattern_type.clone(),
                                r.name.clone(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                )),
            }
        }
    }
}

fn limit(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

pub async fn quota(args: QuotaArgs) -> anyhow::Result<()> {
    let out = args.client.output;
    let client = args.client.connect().await?;
    match args.command {
        QuotaCommand::Set { principal, produce_bytes_per_sec, fetch_bytes_per_sec, requests_per_sec } => {
            anyhow::ensure!(
                produce_bytes_per_sec.is_some() || fetch_bytes_per_sec.is_some() || requests_per_sec.is_some(),
                "set at least one of --produce-bytes-per-sec, --fetch-bytes-per-sec, --requests-per-sec \
                 (`runnel quota remove` removes a quota)"
            );
            let quota = v1::Quota { produce_bytes_per_sec, fetch_bytes_per_sec, requests_per_sec };
            client.set_quota(&principal, Some(quota)).await?;
            match out {
                OutputFormat::Json => print_json(&json!({ "principal": principal, "set": true })),
                OutputFormat::Text => print(&format!("quota of {principal} set\n")),
            }
        }
        QuotaCommand::Remove { principal } => {
            client.set_quota(&principal, None).await?;
            match out {
                OutputFormat::Json => print_json(&json!({ "principal": principal, "removed": true })),
                OutputFormat::Text => print(&format!("quota of {principal} removed\n")),
            }
        }
        QuotaCommand::List => {
            let quotas = client.list_quotas().await?;
            let q = |p: &v1::PrincipalQuota| p.quota.unwrap_or_default();
            match out {
                OutputFormat::Json => print_json(&json!(quotas
                    .iter()
                    .map(|p| json!({
                        "principal": p.principal,
                        "produce_bytes_per_sec": q(p).produce_bytes_per_sec,
                        "fetch_bytes_per_sec": q(p).fetch_bytes_per_sec,
                        "requests_per_sec": q(p).requests_per_sec,
                    }))
                    .collect::<Vec<_>>())),
                OutputFormat::Text => print(&table(
                    &["PRINCIPAL", "PRODUCE B/S", "FETCH B/S", "REQUESTS/S"],
                    &quotas
                        .iter()
                        .map(|p| {
                            vec![
                                p.principal.clone(),
                                limit(q(p).produce_bytes_per_sec),
                                limit(q(p).fetch_bytes_per_sec),
                                limit(q(p).requests_per_sec),
                            ]
                        })
                        .collect::<Vec<_>>(),
                )),
            }
        }
    }
}

pub async fn token(args: TokenArgs) -> anyhow::Result<()> {
    let client = args.client.connect().await?;
    let TokenCommand::Create { user, lifetime_secs } = args.command;
    let (token, expires_at_ms) = client.create_token(user.as_deref(), lifetime_secs.map(Duration::from_secs)).await?;
    match args.client.output {
        OutputFormat::Json => print_json(&json!({ "token": token, "expires_at_ms": expires_at_ms })),
        OutputFormat::Text => print(&format!("{token}\n")),
    }
}

pub async fn whoami(args: WhoAmIArgs) -> anyhow::Result<()> {
    let me = args.client.connect().await?.who_am_i().await?;
    match args.client.output {
        OutputFormat::Json => print_json(&json!({
            "principal": me.principal,
            "superuser": me.superuser,
            "authentication_required": me.authentication_required,
        })),
        OutputFormat::Text => print(&format!(
            "{}{}{}\n",
            me.principal,
            if me.superuser { " (superuser)" } else { "" },
            if me.authentication_required { "" } else { " — this cluster does not require authentication" }
        )),
    }
}

//! `runnel certs`: a cluster CA and the certificates it signs, as PEM files (docs/SECURITY.md).
//!
//! ```text
//! runnel certs ca     --dir certs                                   -> certs/ca.pem, certs/ca.key
//! runnel certs node   --dir certs --id 1 --host 10.0.0.1 --host n1  -> certs/node-1.pem, .key
//! runnel certs client --dir certs --name alice                      -> certs/client-alice.pem, .key
//! ```
//! Private keys are written readable by their owner only. Keep `ca.key` off the nodes: only
//! whoever issues certificates needs it.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use runnel_security::certs::{issue, new_ca, CertAndKey, Subject};
use runnel_types::NodeId;

#[derive(Debug, Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: CertsCommand,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// A new cluster CA: <dir>/ca.pem (give it to every node and client) and <dir>/ca.key.
    Ca {
        /// Directory to write into (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "Runnel cluster CA")]
        name: String,
        /// Validity, days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// A node certificate signed by <dir>/ca.pem: <dir>/node-<id>.pem and .key.
    Node {
        /// Directory holding ca.pem and ca.key, and where the certificate goes.
        #[arg(long)]
        dir: PathBuf,
        /// The node id the certificate lets its holder speak as.
        #[arg(long)]
        id: NodeId,
        /// A host name or IP address the node is reached at (repeat for each).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Validity, days.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
    /// A client certificate signed by <dir>/ca.pem: <dir>/client-<name>.pem and .key.
    Client {
        /// Directory holding ca.pem and ca.key, and where the certificate goes.
        #[arg(long)]
        dir: PathBuf,
        /// The principal the certificate authenticates as.
        #[arg(long)]
        name: String,
        /// Validity, days.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
}

fn write(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).with_context(|| {
        format!("writing {} (an existing file is never overwritten; remove it first to replace it)", path.display())
    })?;
    f.write_all(contents.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    f.sync_all().with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}

fn save(dir: &Path, stem: &str, ck: &CertAndKey) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write(&dir.join(format!("{stem}.pem")), &ck.cert_pem, false)?;
    write(&dir.join(format!("{stem}.key")), &ck.key_pem, true)?;
    println!("wrote {0}/{stem}.pem and {0}/{stem}.key", dir.display());
    Ok(())
}

fn load_ca(dir: &Path) -> anyhow::Result<CertAndKey> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).with_context(|| {
            format!("reading {} (make a CA first: runnel certs ca --dir {})", p.display(), dir.display())
        })
    };
    Ok(CertAndKey { cert_pem: read("ca.pem")?, key_pem: read("ca.key")? })
}

pub fn run(args: &CertsArgs) -> anyhow::Result<()> {
    match &args.command {
        CertsCommand::Ca { dir, name, days } => save(dir, "ca", &new_ca(name, *days)?),
        CertsCommand::Node { dir, id, hosts, days } => {
            anyhow::ensure!(*id > 0, "node ids start at 1");
            let ck = issue(&load_ca(dir)?, &Subject::Node { id: *id, hosts: hosts.clone() }, *days)?;
            save(dir, &format!("node-{id}"), &ck)
        }
        CertsCommand::Client { dir, name, days } => {
            anyhow::ensure!(
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)),
                "client names are letters, digits and - _ . @ (got '{name}')"
            );
            let ck = issue(&load_ca(dir)?, &Subject::Client { name: name.clone() }, *days)?;
            save(dir, &format!("client-{name}"), &ck)
        }
    }
}

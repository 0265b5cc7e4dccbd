//! The data directory of a node: a manifest (`specie.toml`: format version, seed and the
//! cluster config the directory was created with) and the durable journal (`journal.redb`).
//!
//! A directory is created once and then always reopened with its own config and seed, so a
//! second `specie run --data-dir` continues the same cluster. A manifest without a journal,
//! a journal without a manifest, a manifest of another format version, or a config or seed on
//! the command line that differs from the directory's own are errors that name the file —
//! never a silent fresh start.

use serde::{Deserialize, Serialize};
use specie_runtime::config::Config;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Manifest file name.
pub const MANIFEST_FILE: &str = "specie.toml";
/// Journal file name.
pub const JOURNAL_FILE: &str = "journal.redb";
/// Format version of the manifest this build reads and writes. Version 2: journaled steps
/// carry what their transaction records need (decision times, payees, offline payers), so a
/// journal of version 1 cannot be replayed.
pub const MANIFEST_VERSION: u32 = 2;
/// The identity this node writes into its journal; another node's journal is refused.
pub const NODE_IDENTITY: &[u8] = b"specie-node:local";

/// A data directory cannot be used.
#[derive(Debug, Error)]
pub enum DataDirError {
    /// A file cannot be read or written.
    #[error("{file}: {why}")]
    Io {
        /// The file.
        file: String,
        /// The OS error.
        why: String,
    },
    /// The directory is inconsistent or does not match the command line.
    #[error("{file}: {why}")]
    Invalid {
        /// The file.
        file: String,
        /// What is wrong.
        why: String,
    },
    /// The stored config does not validate.
    #[error(transparent)]
    Config(#[from] specie_runtime::config::ConfigError),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format_version: u32,
    seed: u64,
    config: String,
}

/// An opened data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    /// The directory.
    pub path: PathBuf,
    /// The cluster seed it was created with.
    pub seed: u64,
    /// The cluster config it was created with.
    pub config: Config,
    /// Whether it was created just now.
    pub created: bool,
}

impl DataDir {
    /// The journal file.
    pub fn journal_path(&self) -> PathBuf {
        self.path.join(JOURNAL_FILE)
    }

    /// Opens an existing directory (for the offline audit).
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
        let manifest_path = path.join(MANIFEST_FILE);
        if !manifest_path.exists() {
            return Err(DataDirError::Invalid {
                file: manifest_path.display().to_string(),
                why: "no such file: not a specie data directory".into(),
            });
        }
        let text = std::fs::read_to_string(&manifest_path).map_err(|e| DataDirError::Io {
            file: manifest_path.display().to_string(),
            why: e.to_string(),
        })?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| DataDirError::Invalid {
            file: manifest_path.display().to_string(),
            why: format!("corrupt manifest: {}", e.to_string().trim_end()),
        })?;
        if manifest.format_version != MANIFEST_VERSION {
            return Err(DataDirError::Invalid {
                file: manifest_path.display().to_string(),
                why: format!(
                    "written in data directory format version {}; this build reads version {MANIFEST_VERSION}",
                    manifest.format_version
                ),
            });
        }
        let journal = path.join(JOURNAL_FILE);
        if !journal.exists() {
            return Err(DataDirError::Invalid {
                file: journal.display().to_string(),
                why:
                    "missing: the manifest exists but the journal does not; refusing to start empty"
                        .into(),
            });
        }
        let origin = format!("{} (config stored in it)", manifest_path.display());
        let config = Config::parse(&manifest.config, &origin)?;
        Ok(DataDir {
            path: path.to_path_buf(),
            seed: manifest.seed,
            config,
            created: false,
        })
    }

    /// Opens the directory, or creates it with `config_text` and `seed`. When the directory
    /// exists, a config or seed given on the command line must match its own.
    pub fn open_or_create(
        path: &Path,
        config_text: &str,
        config_origin: &str,
        config_given: bool,
        seed: Option<u64>,
    ) -> Result<DataDir, DataDirError> {
        let manifest_path = path.join(MANIFEST_FILE);
        if manifest_path.exists() {
            let dir = DataDir::open(path)?;
            if config_given {
                let given = Config::parse(config_text, config_origin)?;
                if given != dir.config {
                    return Err(DataDirError::Invalid {
                        file: manifest_path.display().to_string(),
                        why: format!(
                            "the directory was created with another config than {config_origin}; omit --config to continue with the directory's own"
                        ),
                    });
                }
            }
            if let Some(seed) = seed.filter(|s| *s != dir.seed) {
                return Err(DataDirError::Invalid {
                    file: manifest_path.display().to_string(),
                    why: format!(
                        "the directory was created with seed {}, not {seed}",
                        dir.seed
                    ),
                });
            }
            return Ok(dir);
        }
        let journal = path.join(JOURNAL_FILE);
        if journal.exists() {
            return Err(DataDirError::Invalid {
                file: manifest_path.display().to_string(),
                why: format!(
                    "missing, but {} exists; refusing to guess its config",
                    journal.display()
                ),
            });
        }
        let config = Config::parse(config_text, config_origin)?;
        std::fs::create_dir_all(path).map_err(|e| DataDirError::Io {
            file: path.display().to_string(),
            why: e.to_string(),
        })?;
        let manifest = Manifest {
            format_version: MANIFEST_VERSION,
            seed: seed.unwrap_or(1),
            config: config_text.to_string(),
        };
        let text = toml::to_string(&manifest).expect("manifest serializes");
        std::fs::write(&manifest_path, text).map_err(|e| DataDirError::Io {
            file: manifest_path.display().to_string(),
            why: e.to_string(),
        })?;
        Ok(DataDir {
            path: path.to_path_buf(),
            seed: manifest.seed,
            config,
            created: true,
        })
    }
}

/// Rebuilds every actor of the directory's cluster from its journal, read-only, and takes the
/// snapshot an audit needs. The journal file is never written.
pub fn offline_snapshot(dir: &DataDir) -> Result<crate::ClusterSnapshot, crate::ClusterError> {
    use specie_runtime::host::{recover, Factory};
    use specie_runtime::StateMachine;
    use std::sync::Arc;

    let journal = specie_runtime::RedbJournal::open_read_only(&dir.journal_path())?;
    let blueprint = crate::Blueprint::new(&dir.config, dir.seed);
    let central_bank: Factory<_> = Arc::new(blueprint.central_bank());
    let central_bank = recover(&journal, &central_bank)?.snapshot();
    let mut institutions = Vec::with_capacity(blueprint.institution_count());
    for i in 0..blueprint.institution_count() {
        let factory: Factory<_> = Arc::new(blueprint.institution(i));
        institutions.push(recover(&journal, &factory)?.snapshot());
    }
    let mut wallets = Vec::with_capacity(blueprint.wallet_count() as usize);
    for w in 0..blueprint.wallet_count() {
        let id = specie_protocol::WalletId(w);
        let factory: Factory<_> = Arc::new(blueprint.wallet(id, blueprint.wallet_keys(id)));
        wallets.push(recover(&journal, &factory)?.snapshot());
    }
    // Every escrow that ever froze coins is held by its issuer; the others hold no value.
    let mut escrow_ids: Vec<u64> = institutions
        .iter()
        .flat_map(|i| i.escrow_holds.keys().copied())
        .collect();
    escrow_ids.sort_unstable();
    let mut escrows = Vec::with_capacity(escrow_ids.len());
    for id in escrow_ids {
        let factory: Factory<_> = Arc::new(blueprint.escrow(id));
        escrows.push(recover(&journal, &factory)?.snapshot());
    }
    Ok(crate::ClusterSnapshot {
        central_bank,
        institutions,
        wallets,
        escrows,
        deposited: blueprint.deposited(),
    })
}

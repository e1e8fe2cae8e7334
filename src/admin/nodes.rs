//! `syncserver node list|add|update|remove`: the tokenserver's `nodes` rows of the Sync service.

use super::{runtime, settings_tokenserver, table, ts_admin};
use crate::settings::Settings;
use crate::tokenserver::db::admin::{AdminOp, AdminOut, NodeChange, NodeRow};

#[derive(Debug, Clone)]
pub enum NodeCommand {
    List {
        json: bool,
    },
    Add {
        url: String,
        change: NodeChange,
    },
    Update {
        url: String,
        change: NodeChange,
    },
    Remove {
        url: String,
        reassign: Option<String>,
    },
}

pub fn run(settings: Settings, command: NodeCommand) -> Result<(), String> {
    let rt = runtime()?;
    let (db, service) = settings_tokenserver(&rt, &settings)?;
    match command {
        NodeCommand::List { json } => {
            let AdminOut::Nodes(nodes) = ts_admin(
                &rt,
                &db,
                AdminOp::Nodes {
                    service: Some(service),
                },
            )?
            else {
                return Err("unexpected answer".into());
            };
            print!("{}", render(&nodes, json)?);
        }
        NodeCommand::Add { url, change } => {
            let url = node_url(&url)?;
            ts_admin(
                &rt,
                &db,
                AdminOp::AddNode {
                    service,
                    url: url.clone(),
                    change,
                },
            )?;
            eprintln!("syncserver: node {url} added");
        }
        NodeCommand::Update { url, change } => {
            if change == NodeChange::default() {
                return Err("node update: nothing to change (give --capacity, --available, --current-load, --downed or --backoff)".into());
            }
            ts_admin(
                &rt,
                &db,
                AdminOp::UpdateNode {
                    service,
                    url: url.clone(),
                    change,
                },
            )?;
            eprintln!("syncserver: node {url} updated");
        }
        NodeCommand::Remove { url, reassign } => {
            ts_admin(
                &rt,
                &db,
                AdminOp::RemoveNode {
                    service,
                    url: url.clone(),
                    reassign_to: reassign.clone(),
                },
            )?;
            match reassign {
                Some(to) => eprintln!("syncserver: node {url} removed, its users moved to {to}"),
                None => eprintln!("syncserver: node {url} removed"),
            }
        }
    }
    Ok(())
}

/// A node is the URL Firefox is sent to: scheme and host, no trailing slash.
fn node_url(url: &str) -> Result<String, String> {
    let url = url.trim_end_matches('/');
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 64 {
        return Err(format!(
            "node URL {url:?}: expected http(s)://HOST[:PORT][/PATH], at most 64 characters"
        ));
    }
    Ok(url.to_owned())
}

fn render(nodes: &[NodeRow], json: bool) -> Result<String, String> {
    if json {
        return serde_json::to_string_pretty(nodes)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string());
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            vec![
                n.id.to_string(),
                n.node.clone(),
                n.capacity.to_string(),
                n.available.to_string(),
                n.current_load.to_string(),
                n.downed.to_string(),
                n.backoff.to_string(),
                n.users.to_string(),
            ]
        })
        .collect();
    Ok(table(
        &[
            "id",
            "node",
            "capacity",
            "available",
            "current_load",
            "downed",
            "backoff",
            "users",
        ],
        &rows,
    ))
}

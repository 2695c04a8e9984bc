//! A Kafka client that is not ours: kafkajs, driven through the small node
//! script in `tests/it/kafkajs/`, reads a consumer group the way operators'
//! tools do (ListGroups, then OffsetFetch from the group's coordinator).
//!
//! `scripts/test` installs kafkajs (`npm ci` in that folder) when missing.
//! A missing node or kafkajs fails the test with the command that fixes it.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// What kafkajs saw of a group.
#[derive(Debug, Clone)]
pub struct GroupView {
    /// Every group the broker lists.
    pub groups: Vec<String>,
    /// The group's committed offsets on the topic (partition → next offset);
    /// partitions without one are left out.
    pub offsets: BTreeMap<i32, i64>,
    /// kafkajs's answer as printed, for the test's output.
    pub json: String,
}

fn folder() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/kafkajs")
}

/// Lists the groups on `broker` and reads `group`'s offsets on `topic` with
/// kafkajs; `Err` with kafkajs's complaint when the broker does not answer.
pub async fn read_group(broker: &str, group: &str, topic: &str) -> Result<GroupView, String> {
    let folder = folder();
    assert!(
        folder.join("node_modules/kafkajs/package.json").is_file(),
        "kafkajs is not installed: run the tests with scripts/test (it installs it), \
         or run `npm ci --prefix {}`",
        folder.display()
    );
    let output = tokio::process::Command::new("node")
        .arg(folder.join("offsets.js"))
        .args([broker, group, topic])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot run node ({e}): install Node.js 18 or later with npm \
                 (Debian: apt-get install nodejs npm), then run scripts/test"
            )
        });
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let value: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("kafkajs printed no JSON ({e}): {stdout}"));
    let groups = value["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["groupId"].as_str().map(str::to_owned))
        .collect();
    let offsets = value["offsets"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(p, o)| Some((p.parse().ok()?, o.as_i64()?)))
        .filter(|(_, o)| *o >= 0)
        .collect();
    Ok(GroupView {
        groups,
        offsets,
        json: stdout,
    })
}

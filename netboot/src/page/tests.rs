//! The page's templates render every state, and escape what came from the network.

use super::*;
use crate::hub::{Hub, Stage};

fn snapshot_with(hub: &Hub, inventory: &str) -> view::Snapshot {
    view::Snapshot {
        now_unix: super::unix_now(),
        inventory: std::sync::Arc::new(
            crate::inventory::parse("inventory.toml", inventory).unwrap(),
        ),
        boots: hub
            .boots()
            .into_iter()
            .map(|b| (b.mac.clone(), b))
            .collect(),
        discovered: hub.discovered_list(),
        ..Default::default()
    }
}

const HOSTILE: &str = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>";

#[test]
fn the_pages_render_and_escape_what_came_from_the_network() {
    let hub = Hub::new();
    let mac = "52:54:00:00:00:01";
    hub.stage(mac, Some("ci0"), Stage::Dhcp, "x64 UEFI");
    hub.stage(mac, Some("ci0"), Stage::Script, HOSTILE);
    hub.discovered("52:54:00:00:00:99", "x64 UEFI", HOSTILE, HOSTILE);
    hub.logs.push("ci0", "WARN", HOSTILE);
    let s = snapshot_with(
        &hub,
        "[nodes.ci0]\nmac = \"52:54:00:00:00:01\"\nrecipe = \"ci-node\"\n",
    );
    let env = environment();
    let page = env
        .get_template("index.html")
        .unwrap()
        .render(minijinja::value::Serde(view::fleet(&s)))
        .unwrap();
    let boots = hub.boots_of(mac);
    let node = env
        .get_template("node.html")
        .unwrap()
        .render(minijinja::value::Serde(view::node(
            &s,
            "ci0",
            &boots,
            hub.logs.lines(&["ci0", mac]),
        )))
        .unwrap();
    for html in [&page, &node] {
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<img src=x"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
            "{html}"
        );
        // The only script is the page's own file.
        assert_eq!(html.matches("<script").count(), 1, "{html}");
    }
    assert!(page.contains("id=\"node-ci0\""), "{page}");
    assert!(page.contains("booting: script"), "{page}");
    assert!(page.contains("52:54:00:00:00:99"), "{page}");
    assert!(node.contains("Server log for this node"), "{node}");
    assert!(node.contains("WARN &lt;script"), "{node}");
    // Read-only without a fleet: no action buttons.
    assert!(!page.contains("data-action"), "{page}");
}

#[test]
fn a_row_says_where_the_node_is() {
    let hub = Hub::new();
    let inv = "[nodes.a]\nmac = \"52:54:00:00:00:01\"\nrecipe = \"r\"\n\
               [nodes.b]\nmac = \"52:54:00:00:00:02\"\nrecipe = \"r\"\n";
    hub.stage("52:54:00:00:00:01", Some("a"), Stage::Dhcp, "x64 UEFI");
    hub.stage("52:54:00:00:00:01", Some("a"), Stage::Script, "r@1");
    hub.stage("52:54:00:00:00:01", Some("a"), Stage::Ready, "r@1 in 9.5 s");
    let s = snapshot_with(&hub, inv);
    let a = view::row(&s, "a");
    assert_eq!((a.state.as_str(), a.class), ("ready", "ok"));
    assert_eq!(a.running.as_deref(), Some("1"));
    assert_eq!(
        a.stages.iter().map(|c| c.name).collect::<Vec<_>>(),
        ["dhcp", "script", "ready"]
    );
    assert!(a.stages.iter().all(|c| c.took_s >= 0.0));
    let b = view::row(&s, "b");
    assert_eq!((b.state.as_str(), b.class), ("not seen", "idle"));
    // With a fleet, a ready the agent no longer backs is no longer ready.
    let mut s = s;
    s.fleet = Some(BTreeMap::new());
    assert_eq!(view::row(&s, "a").state, "not heard from");
}

#[test]
fn clock_is_utc() {
    assert_eq!(clock(0), "1970-01-01 00:00:00 UTC");
    assert_eq!(clock(951_782_400), "2000-02-29 00:00:00 UTC");
    assert_eq!(clock(1_796_300_000), "2026-12-03 12:13:20 UTC");
}

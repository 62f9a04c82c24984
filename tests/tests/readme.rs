//! The README's examples run as written: every `sh` block the README marks with
//! `<!-- tested: tests/tests/readme.rs -->` is run, block after block in the README's order, by
//! bash against a `skiff up` cluster with nodes, from a directory laid out as a checkout after
//! `scripts/up` (`.skiff/`, `target/debug/skiff`, `tests/fixtures/`).
//!
//! A line's trailing comment may say what the line does where a script cannot simply run it:
//! `# in another terminal…` and `# follows…` mark commands that keep printing until
//! interrupted — they must still be running after a few seconds; `# Error: TEXT` marks a
//! command that must fail printing TEXT.

use skiff_tests::{skiff_bin, Cluster};
use std::path::Path;
use std::process::Command;

const MARK: &str = "<!-- tested: tests/tests/readme.rs -->";

/// The marked blocks of `readme`, in order: (line number of the fence, text).
fn marked_blocks(readme: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut lines = readme.lines().enumerate();
    while let Some((_, line)) = lines.next() {
        if line.trim() != MARK {
            continue;
        }
        let (at, fence) = lines.next().expect("a block after the mark");
        assert_eq!(fence.trim(), "```sh", "README line {}: the mark must precede a ```sh block", at + 1);
        let body: Vec<&str> = lines.by_ref().map(|(_, l)| l).take_while(|l| l.trim() != "```").collect();
        blocks.push((at + 1, body.join("\n")));
    }
    blocks
}

/// The line with a trailing `# comment` split off (a `#` after whitespace, outside quotes).
fn split_comment(line: &str) -> (&str, &str) {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev.is_whitespace() && i > 0 => {
                return (line[..i].trim_end(), line[i + 1..].trim());
            }
            _ => {}
        }
        prev = c;
    }
    (line, "")
}

/// `block` as a bash script that checks what its comments promise.
fn script(block: &str) -> String {
    let mut out = String::from("set -eo pipefail\n");
    // The word that ends the here-document being read, if one is.
    let mut heredoc: Option<String> = None;
    for line in block.lines() {
        let (command, comment) = split_comment(line);
        if let Some(end) = &heredoc {
            if line == end {
                heredoc = None;
            }
            out.push_str(line);
        } else if command.trim().is_empty() || line.trim_start().starts_with('#') || command.ends_with('\\') {
            out.push_str(line);
        } else if comment.starts_with("in another terminal") || comment.starts_with("follows") {
            // Still printing after 5 s: timeout's 124.
            out.push_str(&format!("timeout 5 {command} || [ $? = 124 ]"));
        } else if let Some(text) = comment.strip_prefix("Error: ") {
            let wanted = format!("Error: {text}").replace('\'', r"'\''");
            out.push_str(&format!(
                "if {command} > readme-out 2>&1; then echo 'succeeded, but the README says it fails'; exit 1; fi; \
                 cat readme-out; grep -qF '{wanted}' readme-out"
            ));
        } else {
            // `set -e` lets the left side of `a && b` fail unnoticed: every command line must.
            out.push_str(&format!("{command} || exit $?"));
            if let Some((_, word)) = command.split_once("<<") {
                heredoc = Some(word.trim().trim_matches('\'').to_string());
            }
        }
        out.push('\n');
    }
    out
}

#[test]
fn the_readme_comments_say_what_a_script_checks() {
    assert_eq!(
        split_comment("kubectl get pods -w   # in another terminal: x"),
        ("kubectl get pods -w", "in another terminal: x")
    );
    assert_eq!(split_comment("echo '# not a comment' \"a # b\""), ("echo '# not a comment' \"a # b\"", ""));
    assert_eq!(split_comment("echo ${E%%,*} $#"), ("echo ${E%%,*} $#", ""));
    let s = script("a b   # follows\nc   # Error: no can't do\nd");
    assert!(s.contains("timeout 5 a b || [ $? = 124 ]\n"), "{s}");
    assert!(s.contains("if c > readme-out") && s.contains(r"grep -qF 'Error: no can'\''t do'"), "{s}");
    assert!(s.ends_with("\nd || exit $?\n"), "{s}");
    let s = script("cat > f <<'Y'\na: b\nY\nx && \\\n  y");
    assert!(s.ends_with("cat > f <<'Y' || exit $?\na: b\nY\nx && \\\n  y || exit $?\n"), "{s}");
}

#[test]
fn the_readmes_examples_run_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let blocks = marked_blocks(&readme);
    assert!(blocks.len() >= 7, "the README marks {} blocks as tested; its examples are more", blocks.len());

    let c = Cluster::with_nodes(3, 2, &[]);
    // A checkout after `scripts/up`, where the README's commands are typed.
    let work = tempfile::Builder::new().prefix("skiff-readme-").tempdir().unwrap();
    std::os::unix::fs::symlink(c.dir.path(), work.path().join(".skiff")).unwrap();
    std::fs::create_dir_all(work.path().join("target/debug")).unwrap();
    std::os::unix::fs::symlink(skiff_bin(), work.path().join("target/debug/skiff")).unwrap();
    std::fs::create_dir(work.path().join("tests")).unwrap();
    std::os::unix::fs::symlink(root.join("tests/fixtures"), work.path().join("tests/fixtures")).unwrap();

    for (line, block) in &blocks {
        let o = Command::new("bash")
            .arg("-c")
            .arg(script(block))
            .current_dir(work.path())
            .env_remove("KUBECONFIG")
            .env_remove("SKIFF_CONFIG")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "README block at line {line} failed ({}):\n{block}\n--- stdout\n{}\n--- stderr\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

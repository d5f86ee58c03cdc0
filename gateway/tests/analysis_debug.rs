#[test]
fn dump() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/sql-corpus.sql")).unwrap();
    for block in text.split("\n-- ---\n").skip(1) {
        let mut lines = block.lines();
        let head = lines.next().unwrap();
        let sql: String = lines.collect::<Vec<_>>().join("\n");
        let expect = head.trim_start_matches("-- expect: ").split(';').next().unwrap();
        match portcullis::analysis::analyze(&sql) {
            Ok(a) => {
                let s: Vec<String> = a.statements.iter().map(|s| format!("{}[{}] {:?} rel={:?} fn={:?} cols={:?}", s.class, s.command, s.properties.iter().map(|p| p.as_str()).collect::<Vec<_>>(), s.relations.iter().map(|r| format!("{r}{}", if r.write {"(w)"} else {""})).collect::<Vec<_>>(), s.functions.iter().map(|f| f.to_string()).collect::<Vec<_>>(), s.columns.iter().map(|c| format!("{}:{}:{}", c.name, c.usage.as_str(), c.sources.len())).collect::<Vec<_>>())).collect();
                println!("{expect:8} | {} \n         => {}", sql.replace('\n', " "), s.join(" ;; "));
            }
            Err(e) => println!("{expect:8} | {} \n         => ERR {e}", sql.replace('\n', " ")),
        }
    }
}

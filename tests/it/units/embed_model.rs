//! `src/embed/model.rs`

use embedflow::embed::model::*;

#[test]
fn hub_ids() {
    assert!(looks_like_hub_id("sentence-transformers/all-MiniLM-L6-v2"));
    assert!(!looks_like_hub_id("all-MiniLM-L6-v2"));
    assert!(!looks_like_hub_id("./models/x"));
    assert!(!looks_like_hub_id("a/b/c"));
}

#[test]
fn settings_follow_sentence_transformers_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
    std::fs::write(
        dir.path().join("sentence_bert_config.json"),
        r#"{"max_seq_length": 256}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("modules.json"),
        r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
            {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
            {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("1_Pooling/config.json"),
        r#"{"pooling_mode_cls_token": false, "pooling_mode_mean_tokens": true}"#,
    )
    .unwrap();
    let s = read_settings(dir.path()).unwrap();
    assert_eq!(
        s,
        ModelSettings {
            normalize: true,
            ..ModelSettings::plain(256)
        }
    );
}

#[test]
fn prompts_last_token_pooling_and_left_padding_are_read() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
    std::fs::write(
        dir.path().join("1_Pooling/config.json"),
        r#"{"pooling_mode_lasttoken": true, "include_prompt": false}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("config_sentence_transformers.json"),
        r#"{"prompts": {"query": "Instruct: find\nQuery: ", "document": ""}, "default_prompt_name": null}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"padding_side": "left"}"#,
    )
    .unwrap();
    let s = read_settings(dir.path()).unwrap();
    assert_eq!(s.pooling, Pooling::LastToken);
    assert!(!s.include_prompt && s.pad_left);
    assert_eq!(s.prompts["query"], "Instruct: find\nQuery: ");
    std::fs::write(
        dir.path().join("config_sentence_transformers.json"),
        r#"{"prompts": {"query": "q: "}, "default_prompt_name": "passage"}"#,
    )
    .unwrap();
    let e = read_settings(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("default_prompt_name `passage`") && e.contains("query"),
        "{e}"
    );
}

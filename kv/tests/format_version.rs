//! A member refuses a data dir written in another on-disk format, naming the file and both
//! versions, instead of reading it as something else.
use shoal_kv::member::{Config, Member};

#[tokio::test]
async fn a_raft_log_segment_of_another_format_version_stops_the_member() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_dir = dir.path().join("raft-log");
    std::fs::create_dir_all(&log_dir).expect("log dir");
    let segment = log_dir.join(format!("{:020}.seg", 1));
    let mut header = b"SHOALLOG".to_vec();
    header.extend_from_slice(&2u32.to_le_bytes());
    header.resize(4096, 0);
    std::fs::write(&segment, &header).expect("segment");
    // Port 0: the member fails before anything connects to it.
    let config = Config::local("m0", dir.path().to_path_buf(), 0, 0);
    let Err(error) = Member::start(config).await else {
        panic!("a member started on a log of format version 2");
    };
    assert_eq!(
        error.to_string(),
        format!(
            "data file {} has format version 2, this shoal reads 1",
            segment.display()
        )
    );
}

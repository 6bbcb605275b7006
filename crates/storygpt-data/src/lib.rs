//! # storygpt-data
//!
//! Datasets for StoryGPT-V: the procedural story world (the embedded default's domain), the
//! FlintstonesSV / PororoSV readers for the layouts the original code reads, Story-LDM
//! co-reference captions, and burn batchers for both training stages.
//!
//! Filled in by the data issue of wave 1.

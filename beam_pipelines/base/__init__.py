"""What every stage stands on: pipeline options and runner checks, listing and reading an input folder,
files and Parquet in and out, counts and progress, and the ownership of an output folder (its manifest,
lock, staging and journaled commit) through the gate."""

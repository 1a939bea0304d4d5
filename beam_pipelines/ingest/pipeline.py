"""The ingest pipeline itself: `Ingest`, the transform the launcher (launcher.py) runs.

    Ingest = ListFiles → DecodeBatches → GroupByShard → CountKept/PlanSplits → DedupeAndWrite
             (+ WriteEmptyShards) → rejected/*.parquet, stats.json → Commit

Per-element overhead is what makes a Beam job slow on small images, so work travels in
batches: the listing emits batches of files, each batch is decoded in one call and its
images are pre-grouped by shard, so the shuffle moves one element per (batch, shard) rather
than one per image. The shard of an image is derived from its pixel hash, so all copies
of an image meet in the same shard group, where duplicates and leakage are resolved.

Everything it needs comes in frozen: the run's IngestOptions and the output's CommitPlan.
"""


from __future__ import annotations

import apache_beam as beam

from beam_pipelines.base.counts import MergeCounts
from beam_pipelines.base.files import join
from beam_pipelines.base.outputs import CommitOutputs, CommitPlan
from beam_pipelines.base.reading import ListInput
from beam_pipelines.ingest.options import IngestOptions
from beam_pipelines.ingest.shards import CountKept, DedupeAndWriteShard, WriteEmptyShards, plan_splits, with_shard_plan
from beam_pipelines.ingest.shuffle import DecodeBatch
from beam_pipelines.ingest.stats import WriteStats
from schemas import REJECTED_SCHEMA


class Ingest(beam.PTransform):
    """Image root -> TFRecord shards + rejected rows + stats (the whole ingest, as one transform).

    Returns its PCollections by name: "committed" (the committed manifest, one element), "stats" (stats.json
    as written) and "rejected" (the dead-letter rows)."""

    def __init__(self, options: IngestOptions, plan: CommitPlan):
        super().__init__()
        self.options, self.plan = options, plan

    def expand(self, pbegin):
        a = self.options
        listing = pbegin | "Start" >> beam.Create([a.input]) | "ListFiles" >> ListInput(a.files_per_batch)
        summary = beam.pvalue.AsSingleton(listing[ListInput.SUMMARY] | "ShardPlan" >> beam.Map(with_shard_plan, a))
        decoded = (
            listing["batches"]
            | "SpreadBatches" >> beam.Reshuffle()
            | "DecodeBatches" >> beam.ParDo(DecodeBatch(a), summary).with_outputs("rejected", "stats", main="shards")
        )
        grouped = decoded.shards | "GroupByShard" >> beam.GroupByKey()
        # Known only once duplicates and leakage are resolved: whether val/test are left too small.
        carve = beam.pvalue.AsSingleton(
            grouped
            | "CountKept" >> beam.ParDo(CountKept())
            | "MergeKept" >> beam.CombineGlobally(MergeCounts())
            | "PlanSplits" >> beam.Map(plan_splits, summary, a)
        )
        written = grouped | "DedupeAndWrite" >> beam.ParDo(DedupeAndWriteShard(a), summary, carve).with_outputs(
            "stats", "rejected", main="done")
        # Shards that got no image are written empty, so each split is a complete N-of-N set.
        empty_shards = (
            decoded.shards
            | "ShardIds" >> beam.Keys()
            | "DistinctShards" >> beam.Distinct()
            | "AllShardIds" >> beam.combiners.ToList()
            | "WriteEmptyShards" >> beam.ParDo(WriteEmptyShards(a), summary, carve)
        )
        rejected = (decoded.rejected, written.rejected) | "AllRejected" >> beam.Flatten()
        rejected_files = rejected | "WriteRejected" >> beam.io.WriteToParquet(
            join(a.staging, "rejected", "rejected"),
            REJECTED_SCHEMA,
            file_name_suffix=".parquet",
        )
        stats = (
            (decoded.stats, written.stats)
            | "AllStats" >> beam.Flatten()
            | "MergeStats" >> beam.CombineGlobally(MergeCounts())
            | "WriteStats" >> beam.ParDo(WriteStats(a), summary, carve)
        )
        totals = stats | "Totals" >> beam.Map(lambda s: s["totals"])
        committed = pbegin | "Commit" >> CommitOutputs(self.plan, totals, after=[empty_shards, rejected_files, stats])
        return {"committed": committed, "stats": stats, "rejected": rejected}

-- A partition's index joins the partitioned table's index (created ON ONLY it); the latter turns
-- valid once every partition's index is attached.
ALTER INDEX {index} ATTACH PARTITION {partition}

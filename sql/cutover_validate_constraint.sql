-- Step 2: VALIDATE scans under SHARE UPDATE EXCLUSIVE: reads and writes go on meanwhile.
ALTER TABLE {table} VALIDATE CONSTRAINT {constraint}

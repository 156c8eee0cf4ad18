-- Version 0004 is taken by a migration developed beside this one; this file only keeps
-- the versions contiguous until both meet, and is replaced by that migration then.
SELECT 1;

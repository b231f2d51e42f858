UPDATE notifications SET next_check_at = $2
WHERE id IN (SELECT n.id FROM notifications n
             WHERE n.status IN ('pending', 'processing') AND n.next_check_at < $1
               AND n.id <> ALL($3::bigint[])
             ORDER BY n.next_check_at LIMIT 5000 FOR UPDATE OF n SKIP LOCKED)
RETURNING id, priority

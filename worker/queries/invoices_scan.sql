SELECT p.id, p.amount_minor, p.currency, p.method, p.paid_at, p.booking_id, p.purchase_id,
       u.id AS student_user_id, u.first_name || ' ' || u.last_name AS "student_name!", u.email AS student_email
FROM payments p JOIN students s ON s.id = p.student_id JOIN users u ON u.id = s.user_id
WHERE p.id IN (SELECT id FROM payments
               WHERE status = 'succeeded' AND invoiced_at IS NULL AND id <> ALL($1)
               ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)

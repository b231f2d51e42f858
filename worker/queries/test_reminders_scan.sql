SELECT s.id AS "id!", s.user_id AS "user_id!", s.test_dates AS "test_dates!" FROM students s WHERE latest_test_date(s.test_dates) > $1
UNION
SELECT s.id, s.user_id, s.test_dates FROM students s
WHERE s.user_id IN (SELECT user_id FROM notifications WHERE type = 'test_reminder' AND status IN ('pending', 'processing'))

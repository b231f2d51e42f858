SELECT b.instructor_id, iu.id AS instructor_user, iu.timezone, b.start_time, b.end_time, b.pickup_location,
       su.first_name || ' ' || su.last_name AS "student_name!"
FROM bookings b
JOIN instructors i ON i.id = b.instructor_id AND i.active
JOIN users iu ON iu.id = i.user_id AND iu.status = 'active'
JOIN students s ON s.id = b.student_id JOIN users su ON su.id = s.user_id
WHERE b.status = 'confirmed' AND b.start_time >= $1::timestamptz - interval '26 hours' AND b.start_time < $1::timestamptz + interval '26 hours'
ORDER BY b.instructor_id, b.start_time

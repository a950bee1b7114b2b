-- 055_reply_to.sql — the post a message replies to.
--
-- Channels answer their own signals: "Alvo 1 atingido ✅" posted as a reply to the signal. The
-- poller links such a follow-up to its signal by this id first (issue 16), so the gateway keeps
-- Telegram's reply_to.reply_to_msg_id of every post (NULL when the post is not a reply).

ALTER TABLE telegram_gateway.messages ADD COLUMN IF NOT EXISTS reply_to_msg_id bigint;

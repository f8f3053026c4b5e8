"""What mail clients put around a reply, as data: one table per family, per language.

`mailflow.quotes` compiles these tables once into bounded regular expressions. To teach
mailflow a new client or language, add a row here (and a fixture under
tests/fixtures/replies/); no code changes. Entries are regex fragments, matched
case-insensitively unless a family says otherwise; keep them free of nested
quantifiers (the compiled patterns must stay linear on hostile input).
"""

from __future__ import annotations

# --- attribution lines: "On <date>, <name> wrote:" ---
#
# The verb that says "wrote". A line is an attribution when it carries one of these verbs,
# ends with it (or with a ":" a short way after it, as in "Am … schrieb Ana <ana@x>:"), and
# names a date, an address, or introduces "> " lines. Fragments carry their own word
# boundaries: scripts without spaces (Chinese, Japanese, Korean) have none.
WROTE_VERBS: dict[str, tuple[str, ...]] = {
    "en": (r"\bwrote", r"\bwrites"),
    "nl": (r"\bschreef", r"\bhet volgende geschreven", r"\bgeschreven"),
    "sv": (r"\bskrev",),  # also Danish and Norwegian
    "is": (r"\bskrifaði",),
    "fi": (r"\bkirjoitti",),
    "et": (r"\bkirjutas",),
    "lv": (r"\brakstīja",),
    "lt": (r"\brašė",),
    "pl": (r"\bnapisał\(a\)", r"\bnapisała?", r"\bpisze", r"\bnadesłał"),
    "cs": (r"\bnapsal\(a\)", r"\bnapsala?"),
    "sk": (r"\bnapísal\(a\)", r"\bnapísala?"),
    "sl": (r"\bnapisal\(a\)", r"\bnapisala?"),
    "hr": (r"\bje napisao", r"\bje napisala", r"\bnapisao/la je", r"\bnapisa"),
    "hu": (r"\bírta", r"\bezt írta"),
    "ro": (r"\ba scris",),
    "it": (r"\bha scritto", r"\bscrisse"),
    "es": (r"\bescribió", r"\bescribio"),
    "gl": (r"\bescribiu",),
    "ca": (r"\bha escrit", r"\bva escriure"),
    "pt": (r"\bescreveu",),
    "fr": (r"\ba écrit", r"\ba ecrit", r"\bnous a dit"),
    "de": (r"\bschrieb", r"\bgeschrieben"),
    "ru": (r"\bнаписал\(а\)", r"\bнаписала?", r"\bпишет"),
    "uk": (r"\bнаписав\(ла\)", r"\bнаписала?", r"\bнаписав", r"\bпише"),
    "bg": (r"\bнаписа",),
    "sr": (r"\bје написао", r"\bје написала"),
    "el": (r"\bέγραψε",),
    "tr": (r"\bşunu yazdı", r"\byazdı"),
    "vi": (r"\bđã viết", r"\bviết"),
    "id": (r"\bmenulis",),
    "he": (r"כתב\(ה\)", r"כתבה?"),
    "ar": (r"\bكتب",),
    "fa": (r"\bنوشت",),
    "hi": (r"ने लिखा",),
    "th": (r"เขียนว่า", r"เขียน"),
    "tl": (r"\bsumulat",),
    "sw": (r"\baliandika",),
    "eu": (r"\bidatzi zuen",),
    "af": (r"\bhet geskryf", r"\bgeskryf"),
    "sq": (r"\bshkroi",),
    "cy": (r"\bysgrifennodd",),
    "ur": (r"نے لکھا",),
    "bn": (r"লিখেছেন",),
    "zh": (r"写道", r"寫道", r"写了", r"寫了"),
    "ja": (r"のメッセージ", r"は書きました", r"さんは書きました", r"書きました"),
    "ko": (r"님이 작성", r"작성"),
}

# Words that open an attribution ("On", "Le", "Am" …). With one of these first, the colon
# may be missing ("On … wrote", Zoho's "---- On … wrote ----") and the header may be glued
# to the end of the sender's last line ("thanks On Mon, … wrote:"). Case-sensitive.
ATTRIBUTION_LEADS: dict[str, tuple[str, ...]] = {
    "en": ("On", "At", "In message", "Quoting"),
    "fr": ("Le",),
    "de": ("Am", "Zitat von"),
    "es": ("El", "El día"),
    "ca": ("El dia",),
    "it": ("Il", "Il giorno", "In data"),
    "nl": ("Op",),
    "pt": ("Em", "No dia"),
    "pl": ("Dnia", "W dniu"),
    "cs": ("Dne",),
    "sk": ("Dňa",),
    "sv": ("Den", "På"),
    "ro": ("Pe", "În"),
    "el": ("Στις",),
    "vi": ("Vào",),
    "id": ("Pada",),
}

# Whole-line headers of forums, trackers and list archives that have no "wrote" verb.
OTHER_HEADERS: tuple[str, ...] = (
    r"Posted by .{1,80} on \d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}.{0,20}",  # Discourse-style
    r"Quoting .{1,120}[:：]",  # Horde / IMP
    r".{1,80} via .{1,80} (?:wrote|schrieb|a écrit|escribió)[:：]?",  # "bob via Forum wrote:"
)

# English "sent", "said" and "says" are attribution verbs only after a lead word
# ("On …, Ana <a@x> sent:"):
# alone it is too common a word.
LEAD_ONLY_VERBS: tuple[str, ...] = (r"\bsent", r"\bsaid", r"\bsays")

# --- date-first headers without a verb ---
#
# Gmail in Russian, Japanese and others, Yandex, mail.ru and some phones write the date,
# then the sender, then a colon: "ср, 30 апр. 2025 г. в 15:19, Name <addr>:",
# "2014-10-17 11:28 GMT+03:00 Name <addr>:", "30.09.2017, 18.30, "Name" <addr>:",
# "2024年1月1日(月) 10:00 Taro <taro@x>:". Such a line must start within a few words of a
# date or time and end with the sender's address in brackets.
DATE_OR_TIME = (
    r"\d{1,4}[-./年]\s?\d{1,2}"  # 2014-10-17, 30.09.2017, 2011/4/7, 2024年1月
    r"|\d{1,2}:\d{2}"  # 11:28
    r"|\d{1,2}\.\d{2}\b"  # 18.30 (Nordic and Finnish times)
    r"|\d{1,2}\s\w{3,10}\.?\s\d{4}"  # 30 апр. 2025, 1 janv 2024
)
ADDRESS_END = r"[<(\[]\s?(?:mailto:)?[^\s<>()\[\]@]{1,64}@[^\s<>()\[\]@]{1,255}[>)\]]{0,2}\s?[:：]?"

# --- Outlook-style header blocks ---
#
# "From: … / Sent: … / To: … / Subject: …" with the labels in the client's language, bold
# ("*From:*") or spaced ("De : "). A block is two or more of these lines within a few lines,
# one of them naming the sender or the date. Keys say what a label means.
HEADER_LABELS: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {"from": ("From",), "date": ("Sent", "Date"), "to": ("To", "Cc", "Reply-To"),
           "subject": ("Subject",)},
    "fr": {"from": ("De", "Expéditeur"), "date": ("Envoyé", "Date", "Envoyé le"),
           "to": ("À", "A", "Cc", "Destinataire", "Répondre à"), "subject": ("Objet",)},
    "de": {"from": ("Von",), "date": ("Gesendet", "Datum"), "to": ("An", "Cc", "Kopie"),
           "subject": ("Betreff",)},
    "es": {"from": ("De",), "date": ("Enviado", "Enviado el", "Fecha"), "to": ("Para", "CC"),
           "subject": ("Asunto",)},
    "pt": {"from": ("De",), "date": ("Enviada em", "Enviado", "Data"), "to": ("Para", "Cc"),
           "subject": ("Assunto",)},
    "it": {"from": ("Da",), "date": ("Inviato", "Data"), "to": ("A", "Cc", "Risposta"),
           "subject": ("Oggetto",)},
    "nl": {"from": ("Van",), "date": ("Verzonden", "Datum"), "to": ("Aan", "CC"),
           "subject": ("Onderwerp",)},
    "sv": {"from": ("Från",), "date": ("Skickat", "Datum"), "to": ("Till", "Kopia"),
           "subject": ("Ämne",)},
    "da": {"from": ("Fra",), "date": ("Sendt", "Dato"), "to": ("Til", "Cc", "Kopi"),
           "subject": ("Emne",)},
    "fi": {"from": ("Lähettäjä",), "date": ("Lähetetty", "Päivämäärä"),
           "to": ("Vastaanottaja", "Kopio"), "subject": ("Aihe",)},
    "pl": {"from": ("Od",), "date": ("Wysłano", "Wysłane", "Data"), "to": ("Do", "DW"),
           "subject": ("Temat",)},
    "cs": {"from": ("Od",), "date": ("Odesláno", "Datum"), "to": ("Komu", "Kopie"),
           "subject": ("Předmět",)},
    "sk": {"from": ("Od",), "date": ("Odoslané", "Dátum"), "to": ("Komu", "Kópia"),
           "subject": ("Predmet",)},
    "hu": {"from": ("Feladó",), "date": ("Elküldve", "Küldve", "Dátum"),
           "to": ("Címzett", "Másolat"), "subject": ("Tárgy",)},
    "ro": {"from": ("De la",), "date": ("Trimis", "Data"), "to": ("Către",),
           "subject": ("Subiect",)},
    "ru": {"from": ("От",), "date": ("Отправлено", "Дата"), "to": ("Кому", "Копия"),
           "subject": ("Тема",)},
    "uk": {"from": ("Від",), "date": ("Надіслано", "Дата"), "to": ("Кому", "Копія"),
           "subject": ("Тема",)},
    "tr": {"from": ("Kimden",), "date": ("Gönderildi", "Gönderilme", "Tarih"),
           "to": ("Kime", "Bilgi"), "subject": ("Konu",)},
    "el": {"from": ("Από",), "date": ("Στάλθηκε", "Ημερομηνία"), "to": ("Προς", "Κοιν"),
           "subject": ("Θέμα",)},
    "zh": {"from": ("发件人", "寄件者", "發件人"), "date": ("发送时间", "傳送時間", "日期", "時間"),
           "to": ("收件人", "收件者", "抄送", "副本"), "subject": ("主题", "主旨")},
    "ja": {"from": ("差出人", "送信者"), "date": ("送信日時", "日付"), "to": ("宛先", "CC"),
           "subject": ("件名",)},
    "ko": {"from": ("보낸 사람", "보낸사람"), "date": ("보낸 날짜", "날짜"),
           "to": ("받는 사람", "받는사람", "참조"), "subject": ("제목",)},
    "vi": {"from": ("Từ",), "date": ("Đã gửi", "Ngày"), "to": ("Đến",), "subject": ("Chủ đề",)},
    "ca": {"from": ("De",), "date": ("Enviat", "Data"), "to": ("Per a",),
           "subject": ("Assumpte",)},
    "hr": {"from": ("Šalje",), "date": ("Poslano",), "to": ("Prima",), "subject": ("Predmet",)},
    "id": {"from": ("Dari",), "date": ("Dikirim", "Tanggal"), "to": ("Kepada",),
           "subject": ("Subjek", "Perihal")},
    "he": {"from": ("מאת",), "date": ("נשלח",), "to": ("אל",), "subject": ("נושא",)},
    "sl": {"from": ("Pošiljatelj",), "date": ("Poslano",), "to": ("Prejemnik",),
           "subject": ("Zadeva",)},
    "sr": {"from": ("Од", "Šalje"), "date": ("Послато", "Poslato"), "to": ("За", "Prima"),
           "subject": ("Тема", "Predmet")},
    "bg": {"from": ("От",), "date": ("Изпратено",), "to": ("До",), "subject": ("Тема",)},
    "et": {"from": ("Saatja",), "date": ("Saadetud",), "to": ("Adressaat",),
           "subject": ("Teema",)},
    # Latvian "No:" (From) is left out: an English "No: …" answer must not start history.
    "lv": {"date": ("Nosūtīts",), "to": ("Kam",), "subject": ("Tēma",)},
    "lt": {"from": ("Nuo",), "date": ("Išsiųsta",), "to": ("Kam",), "subject": ("Tema",)},
    "th": {"from": ("จาก",), "date": ("ส่ง",), "to": ("ถึง",), "subject": ("เรื่อง",)},
    "ar": {"from": ("من",), "date": ("تم الإرسال", "التاريخ"), "to": ("إلى",),
           "subject": ("الموضوع",)},
}  # fmt: skip

# --- separators that start the quoted message ---
#
# "-----Original Message-----" and its translations, with any number of dashes (or none,
# or asterisks around). Everything from here down is the earlier message.
ORIGINAL_MESSAGE: dict[str, tuple[str, ...]] = {
    "en": ("Original Message", "Reply Message", "Original message"),
    "de": ("Ursprüngliche Nachricht", "Antwort Nachricht", "Originalnachricht",
           "Original-Nachricht"),
    "da": ("Oprindelig meddelelse", "Original meddelelse"),
    "no": ("Opprinnelig melding", "Original melding"),
    "sv": ("Ursprungligt meddelande", "Originalmeddelande"),
    "fi": ("Alkuperäinen viesti",),
    "nl": ("Oorspronkelijk bericht", "Origineel bericht", "Oorspronkelijk Bericht"),
    "fr": ("Message d'origine", "Message original", "Message d’origine"),
    "es": ("Mensaje original",),
    "pt": ("Mensagem original",),
    "it": ("Messaggio originale",),
    "ca": ("Missatge original",),
    "pl": ("Oryginalna wiadomość", "Wiadomość oryginalna"),
    "cs": ("Původní zpráva", "Původní e-mail"),
    "sk": ("Pôvodná správa",),
    "hu": ("Eredeti üzenet",),
    "ro": ("Mesaj original", "Mesajul original"),
    "ru": ("Исходное сообщение", "Оригинальное сообщение", "Original Message"),
    "uk": ("Вихідне повідомлення", "Оригінальне повідомлення"),
    "tr": ("Orijinal Mesaj", "Özgün ileti"),
    "el": ("Αρχικό μήνυμα",),
    "zh": ("原始邮件", "原始郵件", "原始信件"),
    "ja": ("元のメッセージ", "オリジナル メッセージ"),
    "ko": ("원본 메시지",),
    "vi": ("Thư gốc", "Tin nhắn gốc"),
    "hr": ("Izvorna poruka",),
}  # fmt: skip

# Markers that trackers and help desks put in their emails (Redmine, Zammad, Zendesk,
# Jira style): whatever is below is the email they sent.
REPLY_ABOVE: tuple[str, ...] = (
    "Reply above this line",
    "Please reply above this line",
    "Type your reply above this line",
    "Please type your reply above this line",
    "Please do not type below this line",
    "Do not reply below this line",
    "Please do not write below this line",
    "Write above this line",
    "Antworten Sie bitte oberhalb dieser Zeile",
    "Bitte oberhalb dieser Zeile antworten",
    "Répondez au-dessus de cette ligne",
    "Veuillez répondre au-dessus de cette ligne",
    "Responda por encima de esta línea",
    "Rispondi sopra questa riga",
    "Antwoord boven deze lijn",
)

# Forwards: the sender's own text above one is kept; the forwarded message is not theirs
# (unless there is nothing above it, then the forward is what they sent).
FORWARDED: dict[str, tuple[str, ...]] = {
    "en": ("Forwarded message", "Forwarded Message", "Begin forwarded message"),
    "de": ("Weitergeleitete Nachricht", "Anfang der weitergeleiteten Nachricht"),
    "fr": ("Message transféré", "Début du message transféré", "Début du message réexpédié"),
    "es": ("Mensaje reenviado", "Inicio del mensaje reenviado"),
    "pt": ("Mensagem encaminhada", "Início da mensagem encaminhada"),
    "it": ("Messaggio inoltrato", "Inizio messaggio inoltrato"),
    "nl": ("Doorgestuurd bericht", "Begin doorgestuurd bericht"),
    "sv": ("Vidarebefordrat meddelande",),
    "da": ("Videresendt meddelelse", "Videresendt besked"),
    "no": ("Videresendt melding",),
    "fi": ("Välitetty viesti",),
    "pl": ("Przekazana wiadomość", "Wiadomość przekazana dalej"),
    "cs": ("Přeposlaná zpráva",),
    "ru": ("Пересылаемое сообщение", "Пересланное сообщение"),
    "uk": ("Переслане повідомлення",),
    "tr": ("İletilen ileti",),
    "zh": ("转发的邮件", "轉寄的郵件"),
    "ja": ("転送メッセージ",),
}  # fmt: skip

# --- "sent from" lines of phones and apps ---
#
# A whole line, short. The app or device after the phrase is at most a few words, so
# "Sent from my desk, is much easier than my phone." stays the sender's text.
SENT_FROM: dict[str, tuple[str, ...]] = {
    "en": (r"Sent from my", r"Sent from", r"Sent via", r"Sent with", r"Sent using",
           r"Sent by", r"Get Outlook for",
           r"From my (?:i\w+|Android|mobile|phone|cell|tablet|Samsung|Galaxy|BlackBerry)",
           r"\w+ from mobile"),
    "fr": (r"Envoyé de mon", r"Envoyé depuis", r"Envoyé à partir de", r"Envoyé avec",
           r"Télécharger Outlook pour", r"Obtenir Outlook pour"),
    "de": (r"Von meinem", r"Gesendet von", r"Gesendet mit", r"Gesendet vom",
           r"Outlook für", r"Diese Nachricht wurde von"),
    "es": (r"Enviado desde mi", r"Enviado desde", r"Enviado con", r"Obtener Outlook para",
           r"Descargar Outlook para"),
    "pt": (r"Enviado do meu", r"Enviado do", r"Enviado a partir do", r"Obter o Outlook para",
           r"Baixe o Outlook para"),
    "it": (r"Inviato da", r"Inviato dal mio", r"Scarica Outlook per", r"Ottieni Outlook per"),
    "nl": (r"Verzonden vanaf mijn", r"Verstuurd vanaf mijn", r"Verzonden met", r"Verzonden vanaf",
           r"Outlook voor"),
    "sv": (r"Skickat från min", r"Skickat från", r"Hämta Outlook för", r"från min"),
    "da": (r"Sendt fra min", r"Sendt fra", r"Hent Outlook til", r"Hent Outlook for"),
    "fi": (r"Lähetetty(?= [\w-]+(?:sta|stä)\b)", r"Hanki Outlook"),  # "Lähetetty iPhonesta"
    "pl": (r"Wysłano z", r"Wysłane z", r"Pobierz aplikację Outlook"),
    "cs": (r"Odesláno z", r"Odesláno ze"),
    "sk": (r"Odoslané z", r"Odoslané zo"),
    "hu": (r"Küldve", r"Az iPhone-omról küldve"),
    "ro": (r"Trimis de pe", r"Trimis din", r"Trimis cu"),
    "ca": (r"Enviat des del meu", r"Enviat des de"),
    "ru": (r"Отправлено с", r"Отправлено из", r"Отправлено со"),
    "uk": (r"Надіслано з", r"Надіслано із"),
    "el": (r"Στάλθηκε από",),
    "hr": (r"Poslano s", r"Poslano sa"),
    "id": (r"Dikirim dari",),
    "vi": (r"Gửi từ",),
    "bg": (r"Изпратено от",),
    "et": (r"Saadetud",),
    "lv": (r"Nosūtīts no",),
    "lt": (r"Išsiųsta iš",),
    "sl": (r"Poslano iz",),
    "he": (r"נשלח",),
    "th": (r"ส่งจาก",),
    "ar": (r"أُرسلت من", r"أرسلت من"),
    "zh": (r"发自我的", r"从我的", r"從我的", r"来自我的", r"發自我的"),
}  # fmt: skip

# After the device, phones may apologise: "Sent from my phone, please excuse any typos."
SENT_FROM_APOLOGY: tuple[str, ...] = (
    r"please excuse",
    r"excuse",
    r"pardon",
    r"sorry",
    r"apologies",
    r"bitte entschuldigen",
    r"entschuldigen Sie",
    r"excusez",
    r"disculpe",
    r"disculpa",
    r"scusate",
    r"scusa",
)

# Languages that put the device first: "iPhoneから送信", "iPhone'umdan gönderildi".
SENT_FROM_SUFFIX: dict[str, tuple[str, ...]] = {
    "ja": (r"から送信",),
    "ko": (r"에서 보냄",),
    "tr": (r"gönderildi",),
    "hu": (r"küldve",),
    "zh": (r"传送", r"傳送", r"发送"),
}

# --- sign-offs ---
#
# A closing word alone on a line (or followed by the name on the same line), then only a
# name, a title, a phone number (a few short lines) until the end: a signature. A closing
# with nothing after it ("Thanks!") is what the sender said, and stays.
SIGN_OFFS: dict[str, tuple[str, ...]] = {
    "en": ("Thanks", "Thank you", "Thanks again", "Thanks a lot", "Many thanks", "Cheers",
           "Regards", "Best regards", "Kind regards", "Warm regards", "Warmest regards",
           "Best", "Best wishes", "All the best", "Sincerely", "Yours sincerely",
           "Yours truly", "Yours", "Take care", "Thx", "Rgds", "BR", "Greetings", "Respectfully",
           "With thanks", "Talk soon", "Speak soon", "Ta", "Love", "Thanks & Regards",
           "Thanks and regards", "Thanks and best regards", "Many thanks and best regards",
           "Best regards and thanks", "Thanks in advance", "Have a nice day"),
    "de": ("Gruß", "Grüße", "Viele Grüße", "Beste Grüße", "Liebe Grüße", "Schöne Grüße",
           "Herzliche Grüße", "Mit freundlichen Grüßen", "Freundliche Grüße", "MfG", "VG",
           "LG", "Gruss", "Grüsse", "Viele Grüsse", "Freundliche Grüsse", "Danke",
           "Vielen Dank", "Besten Dank"),
    "fr": ("Cordialement", "Bien cordialement", "Bien à vous", "Merci", "Merci beaucoup",
           "Salutations", "Amicalement", "Bonne journée", "À bientôt", "Bises", "Bonne soirée"),
    "es": ("Saludos", "Un saludo", "Saludos cordiales", "Atentamente", "Gracias",
           "Muchas gracias", "Cordialmente", "Un abrazo", "Abrazos"),
    "pt": ("Obrigado", "Obrigada", "Abraços", "Abraço", "Atenciosamente", "Cumprimentos",
           "Att", "Saudações", "Um abraço"),
    "it": ("Saluti", "Cordiali saluti", "Distinti saluti", "Grazie", "Grazie mille",
           "Un saluto", "A presto", "Ciao"),
    "nl": ("Groeten", "Groet", "Met vriendelijke groet", "Met vriendelijke groeten",
           "Hartelijke groet", "Hartelijke groeten", "Bedankt", "Dank je", "Dank u", "Mvg",
           "Vriendelijke groet"),
    "sv": ("Hälsningar", "Med vänliga hälsningar", "Vänliga hälsningar", "Bästa hälsningar",
           "Hälsning", "Tack", "Mvh"),
    "da": ("Med venlig hilsen", "Venlig hilsen", "Hilsen", "Bedste hilsner", "Kh", "Vh",
           "Mange tak"),
    "no": ("Med vennlig hilsen", "Vennlig hilsen", "Takk"),
    "fi": ("Terveisin", "Ystävällisin terveisin", "Parhain terveisin", "Kiitos"),
    "pl": ("Pozdrawiam", "Pozdrawiam serdecznie", "Serdecznie pozdrawiam", "Z poważaniem",
           "Z powazaniem", "Dzięki", "Dziękuję", "Pozdr"),
    "cs": ("S pozdravem", "S úctou", "Děkuji", "Díky"),
    "sk": ("S pozdravom", "Ďakujem"),
    "hu": ("Üdvözlettel", "Üdv", "Köszönöm", "Tisztelettel", "Köszi"),
    "ro": ("Cu stimă", "Mulțumesc", "Mulțumesc frumos", "Toate cele bune"),
    "ca": ("Salutacions", "Gràcies", "Atentament"),
    "ru": ("С уважением", "Спасибо", "Всего доброго", "С наилучшими пожеланиями"),
    "uk": ("З повагою", "Дякую"),
    "tr": ("Saygılarımla", "Teşekkürler", "İyi çalışmalar", "Selamlar"),
    "el": ("Ευχαριστώ", "Με εκτίμηση", "Φιλικά"),
    "vi": ("Trân trọng", "Cảm ơn"),
    "id": ("Terima kasih", "Salam"),
    "zh": ("谢谢", "此致", "祝好", "此致敬礼", "多谢"),
    "ja": ("よろしくお願いします", "よろしくお願いいたします"),
    "ko": ("감사합니다", "고맙습니다"),
}  # fmt: skip

# --- legal footers and gateway banners ---
#
# A confidentiality footer below the sender's text ends it, like a signature (it starts a
# paragraph of its own). A warning banner a mail gateway puts on top of the body ("CAUTION:
# This email originated from outside …") is not the sender's either: that paragraph goes.
DISCLAIMERS: tuple[str, ...] = (
    r"CONFIDENTIALITY NOTICE",
    r"CONFIDENTIALITY:",
    r"Confidentiality Notice",
    r"Disclaimer:",
    r"DISCLAIMER",
    r"This e-?mail and any (?:files|attachments)",
    r"This (?:e-?mail|message) (?:is confidential|contains confidential|may contain)",
    r"The information (?:contained )?in this (?:e-?mail|message)",
    r"Diese E-Mail (?:enthält|kann) vertrauliche",
    r"Ce (?:message|courriel) (?:et|est)",
    r"Este (?:mensaje|correo) (?:y sus|es confidencial|contiene)",
    r"Questo messaggio e i suoi allegati",
    r"Deze e-mail (?:kan|is) vertrouwelijk",
)
BANNERS: tuple[str, ...] = (
    r"CAUTION: This (?:e-?mail|message) originated from outside",
    r"\[?EXTERNAL\]?(?: EMAIL| MESSAGE)?:? (?:This|Do not|Use caution)",
    r"WARNING: This (?:e-?mail|message) originated from outside",
    r"ACHTUNG: Diese E-Mail stammt von außerhalb",
    r"ATTENTION : Ce courriel provient de l'extérieur",
)

# --- signature separators ---
#
# "-- " (RFC 3676), and the "--", "---", "__" people type instead: everything below is the
# signature.
SIGNATURE_SEPARATORS: tuple[str, ...] = ("--", "-- ", "---", "__", "___", "—", "–")

# A dash- or slash-led name as the last line: "-roman", "- Lev", "—Bob", "/John".
DASH_NAME = r"[-–—~/]\s?[^\W\d_][\w.'’-]{0,30}(?:\s[^\W\d_][\w.'’-]{0,30}){0,2}"

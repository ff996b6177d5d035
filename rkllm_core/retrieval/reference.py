"""A small, topic-diverse sample of questions and passages, written for this project.

Hidden states of a generative model share a large common direction (they are anisotropic),
and a question's common direction differs from a passage's. Subtracting each side's mean
before the cosine removes both (benchmarks/retrieval.py measures it). The means are a
property of the model, so they are estimated once per model on this sample, which belongs to
no user corpus and to no benchmark set. Nothing is scored against it.
"""

from __future__ import annotations

REFERENCE_QUESTIONS: tuple[str, ...] = (
    "How do I reset my password if I no longer have access to my email?",
    "What is the difference between a virus and a bacterium?",
    "Why does bread go stale faster in the fridge?",
    "Can I run two versions of the program side by side?",
    "How long should a newborn sleep each day?",
    "What causes the seasons on Earth?",
    "Is it safe to update the firmware while the battery is low?",
    "Where can I find the log files after a crash?",
    "Why are my tomato leaves turning yellow?",
    "How does compound interest work?",
    "What should I do if the installer stops halfway?",
    "Who is allowed to vote in local elections?",
    "How can I make my code run faster on a small board?",
    "What is the best way to store fresh herbs?",
    "Why does my laptop fan get loud when I open a browser?",
    "How do I cite a web page in a research paper?",
    "What are the symptoms of dehydration?",
    "Can the library book loan be extended online?",
    "How are tides related to the moon?",
    "What license do I need to distribute modified copies?",
    "Why is the sky blue during the day and red at sunset?",
    "How do I connect the device to a wireless network?",
    "What happens to my data when I delete my account?",
    "How much water does a cactus need in winter?",
    "Is there a limit on the size of uploaded files?",
    "What is the difference between weather and climate?",
    "How do I change the default language of the interface?",
    "Why do cats purr?",
    "How can I tell whether an egg is still fresh?",
    "What does the error message about a missing dependency mean?",
    "How do vaccines train the immune system?",
    "Which ports must be open for the server to be reachable?",
    "What is the capital gains tax on selling shares?",
    "How do I remove a stripped screw?",
    "Why did the build fail after upgrading the compiler?",
    "When was the printing press invented?",
    "How can I back up my phone without a cloud account?",
    "What is a good beginner exercise routine?",
    "Does the warranty cover accidental damage?",
    "How do bees make honey?",
)

REFERENCE_PASSAGES: tuple[str, ...] = (
    "The museum opens at nine in the morning on weekdays and at ten on weekends. Guided tours "
    "leave from the main hall every hour and last about forty minutes.",
    "To install the package, download the archive, unpack it into a folder of your choice and "
    "run the setup script. Administrator rights are only needed for a system-wide install.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. It takes place "
    "in the chloroplasts, which contain the green pigment chlorophyll.",
    "The committee meets twice a year to review the budget. Members are elected for three years "
    "and may serve at most two terms in a row.",
    "Heat the oil in a large pan, add the chopped onions and cook them slowly until golden. Then "
    "add the garlic and spices and stir for one more minute.",
    "The river rises in the mountains and flows four hundred kilometres to the sea. Its delta is "
    "home to many species of migrating birds.",
    "If the device does not start, hold the power button for ten seconds to force a restart. If "
    "the light still does not turn on, connect the charger and wait an hour.",
    "The treaty was signed after long negotiations and ended a war that had lasted more than "
    "thirty years. It redrew several borders in the region.",
    "Each user account has a quota of disk space. When the quota is reached, new files cannot be "
    "saved until older ones are deleted or the quota is raised by an administrator.",
    "Regular exercise strengthens the heart and lungs, improves sleep and lowers the risk of "
    "several chronic diseases. Even short daily walks help.",
    "The function returns a list of results sorted by date. An empty list means that nothing "
    "matched the filter; an error is raised only when the filter itself is invalid.",
    "Sourdough bread is leavened by wild yeast and lactic acid bacteria. The starter must be fed "
    "with flour and water every day to stay active.",
    "Tickets can be refunded up to forty-eight hours before the event. After that, they may be "
    "transferred to another person but not refunded.",
    "The planet has two small moons and a thin atmosphere made mostly of carbon dioxide. Its "
    "surface is covered with dust rich in iron oxide, which gives it a red colour.",
    "Passwords must be at least twelve characters long and may not reuse any of the last five "
    "passwords. Two-factor authentication is recommended for all accounts.",
    "The orchestra was founded by a group of amateur musicians and became professional twenty "
    "years later. It now performs about sixty concerts a season.",
    "Water boils at a lower temperature at high altitude because the air pressure is lower. "
    "Cooking times for pasta and rice are therefore longer in the mountains.",
    "The configuration file is read once at start-up. Changes take effect only after the service "
    "is restarted, or after it receives the reload signal.",
    "Children under twelve travel for half price when accompanied by an adult. Infants without "
    "their own seat travel free of charge.",
    "The bridge is a suspension bridge with a main span of more than one kilometre. It was "
    "closed for two years for repairs to its cables.",
    "Backups run every night at two o'clock and are kept for thirty days. Monthly backups are "
    "kept for a year in a separate location.",
    "The plant prefers partial shade and moist, well-drained soil. Water it regularly in summer "
    "but let the soil dry out between waterings in winter.",
    "The company reported higher revenue for the third quarter, driven by strong sales abroad, "
    "but its profit fell because of rising costs.",
    "A compiler translates the whole program before it runs, while an interpreter executes it "
    "statement by statement. Many modern languages combine both approaches.",
    "The library lends books for three weeks. Loans can be renewed twice unless another reader "
    "has reserved the book.",
    "Earthquakes happen when stress built up along a fault is released suddenly. The energy "
    "travels through the ground as seismic waves.",
    "To join the club, fill in the membership form and pay the yearly fee. New members receive "
    "a card that gives access to all facilities.",
    "The vaccine is given in two doses four weeks apart. Mild side effects such as a sore arm or "
    "tiredness usually pass within two days.",
    "The program stores its settings in a hidden folder in the user's home directory. Deleting "
    "that folder restores the defaults.",
    "Glaciers form where more snow falls in winter than melts in summer. Over many years the "
    "snow is compressed into ice, which slowly flows downhill.",
    "Shipping is free for orders above fifty euros. Orders placed before noon are usually "
    "delivered the next working day.",
    "The painter spent most of his life in a small coastal town, and the changing light of the "
    "sea became the main subject of his later work.",
    "Memory leaks happen when a program keeps references to objects it no longer needs. Over "
    "time the process uses more and more memory and may be stopped by the system.",
    "The park has three marked trails of different lengths. Dogs are allowed on the longest "
    "trail if they are kept on a leash.",
    "Interest rates affect how much it costs to borrow money. When the central bank raises its "
    "rate, loans and mortgages usually become more expensive.",
    "The team won the championship after a dramatic final that went to extra time. Their coach "
    "had joined the club only one season earlier.",
    "Encryption turns readable data into ciphertext that only the holder of the right key can "
    "turn back. It protects data both in transit and at rest.",
    "Rice should be rinsed before cooking to remove surface starch. Use about one and a half "
    "cups of water for every cup of rice.",
    "The castle was built in the twelfth century to guard the river crossing. Only the keep and "
    "part of the outer wall survive today.",
    "Updates are downloaded in the background and installed at the next restart. Automatic "
    "updates can be turned off in the settings, which is not recommended.",
)

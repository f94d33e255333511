-- the currencies, with the ids the accounting export uses
INSERT INTO currency (id, code, name) VALUES
    (1, 'EUR', 'Euro'),
    (2, 'USD', 'US dollar'),
    (3, 'GBP', 'Pound sterling'),
    (4, 'CHF', 'Swiss franc');

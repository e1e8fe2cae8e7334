DELETE FROM `collections` WHERE `id` = 100;

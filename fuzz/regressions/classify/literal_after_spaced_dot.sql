SELECT/**/S (value . 100000) AS bmcket, unt(
) FÎÎWH
"""Constants shared by the wechat tests."""

MCHID = "1900000109"
APPID = "wxsimminiprogram01"
MERCHANT_SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
SIM_HOST = "http://sim.test"
PAY_BASE = f"{SIM_HOST}/_sim/pay"
API_BASE = f"{SIM_HOST}/_sim/api"
NOTIFY_URL = "https://merchant.test/wechat/notify"

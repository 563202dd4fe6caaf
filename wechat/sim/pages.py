"""Tiny HTML pages of the simulator: pay checkout, OAuth consent, transfer
confirmation, and an overview. Jinja autoescaping is on for string templates."""

from __future__ import annotations

from typing import Any

from flask import render_template_string
from markupsafe import Markup

_LAYOUT = """<!doctype html><html lang="zh"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><title>{{ title }} · WeChat simulator</title>
<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem}
button{background:#07c160;color:#fff;border:0;border-radius:6px;padding:.7rem 1.4rem;font-size:1rem}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2rem .4rem;font-size:.85rem}</style>
</head><body><p><small>Local WeChat simulator — no real money moves.</small></p><h1>{{ title }}</h1>{{ content }}</body></html>"""  # noqa: E501


def _page(title: str, template: str, **ctx: Any) -> str:
    content = render_template_string(template, **ctx)
    return render_template_string(_LAYOUT, title=title, content=Markup(content))  # noqa: S704 - rendered with autoescape above


def checkout_page(order_view: dict[str, Any], description: str, paid: bool) -> str:
    template = """<p>{{ description }}</p><p>订单号 {{ o.out_trade_no }} · 金额 ¥{{ '%.2f' % (o.amount.total / 100) }}</p>
{% if paid %}<p><strong>支付成功</strong> ({{ o.transaction_id }})</p>
{% else %}<form method="post"><button type="submit">确认支付</button></form>{% endif %}"""  # noqa: E501
    return _page("微信支付", template, o=order_view, description=description, paid=paid)


def consent_page(appid: str, scope: str, hidden: dict[str, str], name: str = "alice") -> str:
    template = """<p>应用 {{ appid }} 请求获取你的身份 ({{ scope }})。</p>
<form method="get">{% for k, v in hidden.items() %}<input type="hidden" name="{{ k }}" value="{{ v }}">{% endfor %}
<input type="hidden" name="consent" value="1"><label>用户名 <input name="name" value="{{ name }}"
pattern="[A-Za-z0-9_-]{1,32}" required></label> <button type="submit">同意</button></form>"""
    return _page("微信授权", template, appid=appid, scope=scope, hidden=hidden, name=name)


def transfer_page(view: dict[str, Any]) -> str:
    template = """<p>{{ v.transfer_remark }}</p><p>¥{{ '%.2f' % (v.transfer_amount / 100) }} · 状态 {{ v.state }}</p>
{% if v.state == 'WAIT_USER_CONFIRM' %}<form method="post"><button type="submit">确认收款</button></form>{% endif %}"""
    return _page("商家转账", template, v=view)


def overview_page(state: Any) -> str:
    template = """<h2>Orders</h2><table><tr><th>out_trade_no</th><th>state</th><th>fen</th><th></th></tr>
{% for no, o in orders.items() %}<tr><td>{{ no }}</td><td>{{ o.trade_state }}</td><td>{{ o.request.amount.total }}</td>
<td><a href="pay/checkout/{{ o.prepay_id }}">checkout</a></td></tr>{% endfor %}</table>
<h2>Refunds</h2><table><tr><th>out_refund_no</th><th>out_trade_no</th><th>status</th><th>fen</th></tr>
{% for no, r in refunds.items() %}<tr><td>{{ no }}</td><td>{{ r.out_trade_no }}</td><td>{{ r.status }}</td>
<td>{{ r.refund_fen }}</td></tr>{% endfor %}</table>
<h2>Transfers</h2><table>{% for no, t in transfers.items() %}<tr><td>{{ no }}</td><td>{{ t.state }}</td>
<td><a href="pay/transfer/confirm/{{ t.package_info }}">confirm</a></td></tr>{% endfor %}</table>
<h2>Red packets</h2><table>{% for no, r in redpacks.items() %}<tr><td>{{ no }}</td><td>{{ r.status }}</td></tr>{% endfor %}</table>
<h2>Notifications sent by this process</h2><table>{% for d in deliveries %}<tr><td>{{ d.event_type }}</td><td>{{ d.url }}</td>
<td>{{ d.statuses }}</td><td>{{ 'delivered' if d.delivered else ('abandoned' if d.abandoned else 'pending') }}</td></tr>{% endfor %}</table>
<h2>Message push</h2>
<form method="post" action="oa/follow"><label>name <input name="name" value="alice" required></label>
<button name="action" value="follow">关注公众号 follow</button> <button name="action" value="unfollow">取消关注 unfollow</button></form>
<form method="post" action="mp/subscribe"><label>name <input name="name" value="alice" required></label>
<label>templates <input name="template_ids" placeholder="tpl-1,tpl-2" required></label>
<button name="status" value="accept">允许 accept</button> <button name="status" value="reject">拒绝 reject</button></form>
<table><tr><th>push</th><th>to</th><th>what</th><th>from</th><th>answers (this process)</th></tr>
{% for id, p in pushes %}<tr><td>{{ id }}</td><td>{{ p.source }}</td><td>{{ p.event or p.msg_type }}</td><td>{{ p.openid }}</td>
<td>{% set d = push_deliveries.get(id) %}{% if d %}{{ d.statuses }} {{ 'delivered' if d.delivered else ('abandoned' if d.abandoned else 'pending') }}{% endif %}</td></tr>{% endfor %}</table>
<h2>Messages sent</h2><table><tr><th>msgid</th><th>kind</th><th>to</th><th>template</th><th>page</th><th>data</th></tr>
{% for id, m in messages %}<tr><td>{{ id }}</td><td>{{ m.kind }}</td><td>{{ m.touser }}</td><td>{{ m.template_id }}</td>
<td>{{ m.page or '' }}</td><td>{% for k, v in (m.data or {}).items() %}{{ k }}: {{ v.value }}<br>{% endfor %}{{ m.text or '' }}</td></tr>{% endfor %}</table>
<h2>WeCom robot</h2>
<form method="post" action="wecom/say"><label>name <input name="name" value="alice" required></label>
<label>group <input name="group" value="friends"></label> <label>says <input name="content" value="帮助" required></label>
<button type="submit">@机器人 say</button></form>
<table><tr><th>who</th><th>group</th><th>said</th><th>answer</th></tr>{% for id, c in robot_chats %}<tr><td>{{ c.name }}</td>
<td>{{ c.group or '1:1' }}</td><td>{{ c.said }}</td><td>{{ c.status }} {{ c.reply or '' }}</td></tr>{% endfor %}</table>
<h2>WeCom webhook posts</h2><table>{% for id, w in webhook_posts %}<tr><td>{{ w.msgtype }}</td><td>{{ w.content }}</td></tr>{% endfor %}</table>
<h2>Chat-tool cards</h2><table>{% for id, c in chattool %}<tr><td>{{ c.activity_id }}</td><td>{{ c.target_state }}</td>
<td>{{ c.participator_info_list }}</td></tr>{% endfor %}</table>"""  # noqa: E501
    with state.lock:
        ctx = {
            "orders": dict(state.orders.items()),
            "refunds": dict(state.refunds.items()),
            "transfers": dict(state.transfers.items()),
            "redpacks": dict(state.redpacks.items()),
            "pushes": sorted(state.pushes.items(), reverse=True)[:50],
            "messages": sorted(state.sent_messages.items(), key=lambda item: -item[1]["at"])[:50],
            "robot_chats": sorted(state.robot_chats.items(), key=lambda item: -item[1]["at"])[:50],
            "webhook_posts": sorted(state.webhook_posts.items(), key=lambda item: -item[1]["at"])[:50],
            "chattool": sorted(state.chattool_messages.items(), key=lambda item: -item[1]["at"])[:50],
        }
    push_deliveries = {d.notification_id: d for d in state.push_dispatcher.deliveries}
    return _page(
        "WeChat simulator",
        template,
        deliveries=list(state.dispatcher.deliveries),
        push_deliveries=push_deliveries,
        **ctx,
    )

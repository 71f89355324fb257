"""Template filters for the insights page: durations, rates and bands as a person reads them."""

from django import template

from ci_integrations.charts import human_duration

register = template.Library()


@register.filter
def duration(seconds):
    """Seconds as "45 min", "5.5 h" or "3.2 days"; an em dash when nothing was measured."""
    return human_duration(seconds)


@register.filter
def percent(rate):
    """A share (0 to 1) as a whole percentage; an em dash when nothing was measured."""
    return "—" if rate is None else f"{rate:.0%}"


@register.filter
def per_day(value):
    """Deployments per day with two decimals."""
    return "—" if value is None else f"{value:.2f}"


@register.filter
def band_label(band):
    """The band's name, or "no band" when nothing was measured."""
    return band or "no band"
